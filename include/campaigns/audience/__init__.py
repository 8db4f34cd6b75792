"""Who a campaign goes to: contacts imported into lists (`contacts`) and the audience filters (`filters`).

Imports only the shared ground (config, db, errors, queries, states).
"""
