"""Governance: API keys and tenants (``keys``), rate limits and budgets (``limits``),
and the small SQLite helpers they share with the audit log (``sqlite``)."""
