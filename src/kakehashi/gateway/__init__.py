"""The gateway: which backend serves which public model id, and the calls routes make."""
