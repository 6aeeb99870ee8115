"""nbeval's own suites. Each is registered under the `nbeval.suites` entry-point group."""
