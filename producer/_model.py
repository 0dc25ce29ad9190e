"""The base every contract model shares."""

from pydantic import BaseModel, ConfigDict, Discriminator


class ContractModel(BaseModel):
    """Forbids unknown fields, so a misspelt field is an error that names it, not a no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def type_tag(value: object) -> str | None:
    """Discriminate a union on its ``type`` field, tagged ``type=<value>``.

    The ``type=`` prefix keeps the tag apart from real field names in error locations
    (a list's ``action.button`` is a field; an interactive ``button`` is a tag).
    """
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"type={kind}" if isinstance(kind, str) else None


def by_type(*types: str, default: str | None = None) -> Discriminator:
    """A ``type``-tagged discriminator whose error lists the accepted types in plain words.

    ``default`` is the type of an object without ``type`` (Meta's messages: ``text``).
    """

    def tag(value: object) -> str | None:
        if default is not None and isinstance(value, dict) and "type" not in value:
            return f"type={default}"
        return type_tag(value)

    return Discriminator(
        tag,
        custom_error_type="type",
        custom_error_message=f"type must be one of: {', '.join(types)}",
    )
