"""Deciding and executing: plan (spec vs. live state) and apply (store, verify, test mail)."""
