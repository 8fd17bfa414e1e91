"""The operator console: the Django admin of audiences, connections, System Alerts, the delivery logs, users and API
keys. It is the presentation layer, above the HTTP API (api): it reads through the selectors (and the hourly stats of
integrations.stats for the charts) and writes through the services of audiences, integrations and api, and renders.

Roles (the groups made by migration 0003_roles_groups): the connection actions need the custom permission
`integrations.operate_connection` and acknowledging needs `integrations.acknowledge_systemalert`, not the change
permission, so that Operators run them from a view-only changelist or change page. Nobody without a permission on
Configuration sees a link to, or any field of, a configuration beyond its name.

The site is console.site.ConsoleSite (the default site, through console.apps.ConsoleAdminConfig); console.admin, which
Django's autodiscover imports, registers one module per model admin on it.
"""
