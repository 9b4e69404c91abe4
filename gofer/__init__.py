"""pysandbox.gofer"""
