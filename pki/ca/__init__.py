"""The CA itself: setting it up (``setup``), where relying parties find its CRLs and
certificates (``distribution``), the hierarchy an inventory belongs to (``hierarchy``), and
how it stands (``status``)."""
