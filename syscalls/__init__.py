"""pysandbox.syscalls"""
