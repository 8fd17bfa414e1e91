"""Admin forms for Configuration Settings and Connection Settings. The rules of the fields are the model fields'
validators (integrations/validators.py), which the ModelForms run when they validate the instance."""

from django import forms

from audiences.identities import IDENTITY_CHOICES, IDENTITY_LABELS
from audiences.models import Audience
from integrations.models import Configuration, Connection
from integrations.regions import REGION_CHOICES
from integrations.validators import SECRET_ACCESS_KEY_MAX_LENGTH

SECRET_FIELD = "secret_access_key"
SECRET_REQUIRED = "Required: the Secret Access Key of the Access Key ID above."

# The exclusion checkboxes, grouped for the admin's grid (integrations/static/integrations/admin.css).
_OTHER_IDS = ["Other", *(f"Other{n}" for n in range(2, 11))]
_ACCOUNT_IDS = ["Email", "CustomerId", "FacebookId", "GoogleId", "MicrosoftId", "TwitterId", "YahooId"]
IDENTITY_CHOICE_GROUPS = [
    ("Account IDs", [(key, IDENTITY_LABELS[key]) for key in _ACCOUNT_IDS]),
    (
        "Device IDs",
        [(key, label) for key, label in IDENTITY_CHOICES if key not in _ACCOUNT_IDS and key not in _OTHER_IDS],
    ),
    ("Other IDs", [(key, IDENTITY_LABELS[key]) for key in _OTHER_IDS]),
]
FORWARD_HELP = "Off: never forwarded. On: forwarded unless {} is ticked under Identities To Exclude."


class ConfigurationAdminForm(forms.ModelForm):
    """The Secret Access Key is write-only: the field never shows a value, and blank on edit keeps the stored one."""

    secret_access_key = forms.CharField(
        label="Secret Access Key",
        max_length=SECRET_ACCESS_KEY_MAX_LENGTH,
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )

    class Meta:
        model = Configuration
        fields = ["name", "access_key_id", SECRET_FIELD, "send_remove_on_identity_change", "endpoint_url"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields[SECRET_FIELD]
        if self.is_adding:
            field.required = True
            field.error_messages["required"] = SECRET_REQUIRED
            field.help_text = "Encrypted at rest and never shown again once saved."
        else:
            field.help_text = (
                "Write-only: the stored secret is never shown. Leave blank to keep it; type a new one to replace it."
            )

    @property
    def is_adding(self) -> bool:
        return self.instance._state.adding

    def clean_secret_access_key(self) -> str:
        """Blank on add is an error; blank on edit means "keep the stored secret" and comes back as ""."""
        secret = self.cleaned_data.get(SECRET_FIELD, "")
        if not secret and self.is_adding:
            raise forms.ValidationError(SECRET_REQUIRED)
        return secret


class ConnectionAdminForm(forms.ModelForm):
    region = forms.ChoiceField(label="Region", choices=REGION_CHOICES, initial="us-east-1")
    identities_to_exclude = forms.MultipleChoiceField(
        label="Identities To Exclude",
        choices=IDENTITY_CHOICE_GROUPS,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Ticked identities are never forwarded on this connection, whatever the Forward toggles say.",
    )

    class Meta:
        model = Connection
        fields = [
            "audience",
            "configuration",
            "stream_name",
            "region",
            "send_anonymous_users",
            "forward_email_addresses",
            "forward_customer_ids",
            "forward_idfas",
            "forward_google_advertising_ids",
            "identities_to_exclude",
            "append_newline",
            "max_records_per_second",
            "max_bytes_per_second",
        ]
        help_texts = {
            "send_anonymous_users": "Also send members left with no identity to forward after the settings below.",
            "forward_email_addresses": FORWARD_HELP.format("Email Address"),
            "forward_customer_ids": FORWARD_HELP.format("Customer ID"),
            "forward_idfas": FORWARD_HELP.format("Apple Advertising ID (IDFA)"),
            "forward_google_advertising_ids": FORWARD_HELP.format("Google Advertising ID (GAID)"),
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "audience" in self.fields:
            self.fields["audience"].queryset = Audience.objects.live()

    def settings(self) -> dict:
        """The cleaned connection settings, as keyword arguments for connection_create and connection_update."""
        return {name: value for name, value in self.cleaned_data.items() if name not in ("audience", "configuration")}
