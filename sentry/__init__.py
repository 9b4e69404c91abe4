"""pysandbox.sentry"""
