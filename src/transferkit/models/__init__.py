"""Backbone factory and the classifier that wraps it."""
