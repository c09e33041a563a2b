"""Per-user resource quotas."""
