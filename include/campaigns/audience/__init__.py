"""Who a campaign goes to: contacts imported into lists (`contacts`) in the one stored form of an address
(`addresses`), and the audience filters (`filters`).

Imports only the shared ground (config, db, errors, queries, states).
"""
