"""Keep PostgreSQL's statistics on deliveries fresh.

The backlog changes fast (rows go from pending to delivered in bulk); with the default thresholds the planner can go
on believing that most rows are pending, and claim a batch by walking the primary key instead of the partial backlog
index. Analysing after 1% of the table changed keeps the claim on the index. Other databases need nothing.
"""

from django.db import migrations

TUNED = (
    "ALTER TABLE integrations_delivery SET "
    "(autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.01)"
)
DEFAULT = "ALTER TABLE integrations_delivery RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor)"


def tune(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TUNED)


def reset(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DEFAULT)


class Migration(migrations.Migration):
    dependencies = [("integrations", "0003_roles_groups")]

    operations = [migrations.RunPython(tune, reset)]
