"""The masking key and mode as a Dagster resource, so every run states how it masks."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from fetch_etl.logins.masking import Masker, build_masker, load_key


class PiiMaskingResource(ConfigurableResource):
    """Which masking mode, and where its secret key comes from (never shown in the UI)."""

    mode: str = Field(
        default="hmac", description="PII_MASKING_MODE: hmac (one-way) or siv (AES-SIV, reversible with the key)."
    )
    key: str | None = Field(default=None, description="PII_MASKING_KEY: hex or base64, >= 32 bytes.")
    key_file: str | None = Field(
        default=None, description="PII_MASKING_KEY_FILE: a file holding the key (Docker/K8s secrets)."
    )

    def masker(self) -> Masker:
        """The configured masker; raises MaskingKeyError with what to fix when the key is unusable."""
        return build_masker(self.mode, load_key(self.key, self.key_file))
