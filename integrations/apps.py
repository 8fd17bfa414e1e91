from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Amazon Kinesis Data Firehose"

    def ready(self) -> None:
        from project import db  # noqa: F401 - registers the `any` lookup and the connection settings
