"""Template tags of the admin's own pages (``{% load modalkit_admin %}``), run by the web process."""
