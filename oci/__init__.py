"""pysandbox.oci"""
