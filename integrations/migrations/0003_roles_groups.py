"""The two admin roles, as groups.

- Operators: view everything except Configuration Settings (the credentials), acknowledge System Alerts, and test,
  resync, pause and resume connections. They cannot add, change or delete anything, nor create API keys.
- Viewers: the same pages, read-only: view permissions only.

Nobody in either group holds a permission on Configuration: the access key id and the secret are for superusers
(or a group an administrator sets up on purpose).

Permissions are normally created by the post_migrate signal, after every migration has run, so on a fresh database
they do not exist yet here: create_permissions() creates them (and their content types) first, from the historical
models. Running it again is harmless, and so is running this migration on a database where the groups exist already:
each group's permissions are set to exactly the lists below. Reversing deletes the two groups.
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLE_APPS = ["audiences", "integrations", "api"]

VIEW = [
    ("audiences", "view_audience"),
    ("audiences", "view_user"),
    ("integrations", "view_connection"),
    ("integrations", "view_delivery"),
    ("integrations", "view_deliveryattempt"),
    ("integrations", "view_systemalert"),
    ("api", "view_apikey"),
]
OPERATE = [
    ("integrations", "operate_connection"),
    ("integrations", "acknowledge_systemalert"),
]
GROUPS = {"Operators": VIEW + OPERATE, "Viewers": VIEW}


def permissions_of(apps, alias, wanted):
    Permission = apps.get_model("auth", "Permission")
    found = {
        (app_label, codename): pk
        for pk, app_label, codename in Permission.objects.using(alias)
        .filter(content_type__app_label__in={app for app, _ in wanted}, codename__in={code for _, code in wanted})
        .values_list("pk", "content_type__app_label", "codename")
    }
    missing = [f"{app}.{code}" for app, code in wanted if (app, code) not in found]
    if missing:
        raise RuntimeError(f"Permissions not found: {', '.join(missing)}.")
    return [found[key] for key in wanted]


def create_groups(apps, schema_editor):
    alias = schema_editor.connection.alias
    for label in ROLE_APPS:
        # The installed app config (its models module is set, which create_permissions requires); the models and
        # their permissions come from the historical `apps`.
        create_permissions(global_apps.get_app_config(label), verbosity=0, using=alias, apps=apps)
    Group = apps.get_model("auth", "Group")
    for name, wanted in GROUPS.items():
        group, _ = Group.objects.using(alias).get_or_create(name=name)
        group.permissions.set(permissions_of(apps, alias, wanted))


def delete_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("audiences", "0001_initial"),
        ("api", "0001_initial"),
        ("integrations", "0002_roles_permissions"),
    ]

    operations = [migrations.RunPython(create_groups, delete_groups)]
