from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "Operator console"


class ConsoleAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the console's site as the default site (`admin.site`), which every model admin
    registers on and project.urls serves. In INSTALLED_APPS in place of "django.contrib.admin"."""

    default = False  # "console" alone in INSTALLED_APPS is ConsoleConfig
    default_site = "console.site.ConsoleSite"
