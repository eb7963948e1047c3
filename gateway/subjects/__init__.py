"""Answering a data subject: erasure (GDPR Art. 17) and export (Art. 15) across every store, with a
signed receipt. ``gateway subject ...`` and ``/admin/subjects/...`` call these."""
