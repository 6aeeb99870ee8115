"""Report templates (Jinja2); installed as `nbeval.reports`. Generated reports go to reports/out/ (ignored)."""
