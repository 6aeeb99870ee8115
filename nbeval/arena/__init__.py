"""Arena: battles, ratings (Bradley–Terry, Elo) and leaderboards."""
