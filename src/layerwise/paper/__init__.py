"""The paper stage's library: it reads what the earlier stages wrote (never their modules), checks
the paper's claims against it and writes the paper's tables, figures and summary.

Modules: ``reference`` (the paper's published numbers), ``inputs`` (loading and checking the
earlier stages' files), ``claims`` (the claim rules), ``tables``, ``figures`` and ``summary``.
"""
