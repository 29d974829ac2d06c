"""Test vectors shared by the implementations of one behaviour."""
