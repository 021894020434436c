"""The shard server (one partition of one layout over HTTP) and its async client for the router."""
