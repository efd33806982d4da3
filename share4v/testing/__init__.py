"""Test and demo support: a tiny checkpoint in the released on-disk format, made locally."""
