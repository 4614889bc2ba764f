"""Data sources, splits and the decoded image cache."""
