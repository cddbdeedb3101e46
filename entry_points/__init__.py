"""Thin click commands: parse, call the harness library, print. MLproject and `harness` use them."""
