"""A campaign's life around the send path: definitions, schedules, control actions, the reputation guard, stats,
test sends, and the send_campaign run (`pipeline`, one function per DAG task).

Imports every part below it: ground, `audience`, `feedback`, `sending`.
"""
