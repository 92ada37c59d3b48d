"""L0 utilities: distributed helpers, pure schedules, seeding, logging."""
