"""pysandbox.policies"""
