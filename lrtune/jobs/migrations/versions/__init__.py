"""One module per revision of the job store's schema."""
