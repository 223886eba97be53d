"""The published request and response schemas of the public API.

These pydantic models validate requests at the edge and generate the schemas
in `/openapi.json`, so the document and the code cannot drift apart. Input is
normalised before it is checked: full-width digits and letters become
half-width (NFKC), stray spaces go, so `１３８ ００１３ ８０００` is a phone number.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from gateway.contract.json_types import ACCEPT_WHOLE_FLOATS

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_MOBILE = re.compile(r"1[3-9]\d{9}")
_RESIDENT_ID = re.compile(r"\d{17}[\dX]")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"
_BIRTH_YEARS = (1800, 2099)  # what the published pattern allows: 18xx, 19xx, 20xx
# The shape of a resident ID as far as a pattern can say it: area code, a date of birth
# (year 1800-2099, month, day up to 31), sequence number, check character.
RESIDENT_ID_PATTERN = (r"^[0-9]{6}(18|19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])"
                       r"[0-9]{3}[0-9Xx]$")
_SPACES = re.compile(r"\s+")


def normalise_text(value: Any) -> Any:
    """Full-width to half-width and outer spaces removed; non-strings pass to the type check."""
    if isinstance(value, str):
        if (value.isascii() and value.isprintable() and "  " not in value
                and value[:1] != " " and value[-1:] != " "):
            return value  # already normal (NFKC leaves printable ASCII as it is): the usual case
        return _SPACES.sub(" ", unicodedata.normalize("NFKC", value)).strip()
    return value


def _compact(value: Any) -> Any:
    """As normalise_text, and no spaces or dashes inside (phone and ID numbers)."""
    value = normalise_text(value)
    if isinstance(value, str):
        return value.replace(" ", "").replace("-", "")
    return value


def resident_id_check_char(first17: str) -> str:
    """The check character of a mainland resident ID (GB 11643-1999, ISO 7064 MOD 11-2)."""
    total = sum(int(digit) * weight for digit, weight in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11]


def _check_mobile(value: str) -> str:
    if value.startswith("+86"):
        value = value[3:]
    if not _MOBILE.fullmatch(value):
        raise ValueError("must be an 11-digit mainland mobile number starting with 13-19")
    return value


def _check_resident_id(value: str) -> str:
    value = value.upper()
    if not _RESIDENT_ID.fullmatch(value):
        raise ValueError("must be 18 characters: 17 digits and a digit or X")
    year = int(value[6:10])
    try:
        if not _BIRTH_YEARS[0] <= year <= _BIRTH_YEARS[1]:
            raise ValueError
        date(year, int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise ValueError("contains an impossible date of birth") from None
    if resident_id_check_char(value[:17]) != value[17]:
        raise ValueError("has a wrong check digit")
    return value


def _at_most(limit: int) -> BeforeValidator:
    """The length limit on the text as sent, before normalising (which may shorten it), so
    what is refused does not depend on how much of it is spaces or combining marks."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            raise PydanticCustomError("string_too_long",
                                      "String should have at most {max_length} characters",
                                      {"max_length": limit})
        return value

    return BeforeValidator(check)


# The published patterns are the canonical form; full-width digits, spaces and dashes
# are accepted too and normalised to it (the description says so).
_LENIENT = "Full-width digits, spaces and dashes are accepted and normalised."
Mobile = Annotated[str, BeforeValidator(_compact), AfterValidator(_check_mobile), _at_most(32),
                   Field(examples=["13800138000"], json_schema_extra={
                       "pattern": r"^(\+86)?1[3-9][0-9]{9}$", "maxLength": 32,
                       "description": "An 11-digit mainland mobile number. " + _LENIENT})]
ResidentId = Annotated[str, BeforeValidator(_compact), AfterValidator(_check_resident_id),
                       _at_most(32), Field(examples=["11010519491231002X"], json_schema_extra={
                           "pattern": RESIDENT_ID_PATTERN, "maxLength": 32,
                           "description": "An 18-character resident ID. Beyond the pattern, "
                                          "its date of birth must exist (no 30 February) and "
                                          "its last character must be the ISO 7064 MOD 11-2 "
                                          "check character of the first 17. " + _LENIENT})]
ResourceId = Annotated[str, Field(pattern=ID_PATTERN), BeforeValidator(normalise_text),
                       _at_most(64)]


# Lengths are checked on the text as sent and again on the normalised text. Text of
# nothing but spaces is empty once normalised, so the published pattern asks for one
# character that is not a space (\x1c-\x1f count as spaces when trimming).
_NOT_BLANK = {"pattern": r"[^\s\x1c-\x1f]"}
Name = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra=_NOT_BLANK),
                 BeforeValidator(normalise_text), _at_most(64)]
PRODUCT_MAX = 64
ADDRESS_MAX = 200
Product = Annotated[str, Field(min_length=1, max_length=PRODUCT_MAX,
                               json_schema_extra=_NOT_BLANK),
                    BeforeValidator(normalise_text), _at_most(PRODUCT_MAX)]
Address = Annotated[str, Field(min_length=1, max_length=ADDRESS_MAX,
                               json_schema_extra=_NOT_BLANK),
                    BeforeValidator(normalise_text), _at_most(ADDRESS_MAX)]


class _Schema(BaseModel):
    # Unknown fields are refused rather than silently dropped before forwarding.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Customer(_Schema):
    name: Name
    phone: Mobile
    id_number: ResidentId


class OrderRequest(_Schema):
    customer: Customer
    product: Product
    address: Address


class PaymentRequest(_Schema):
    order_id: ResourceId
    amount: Annotated[int, Field(gt=0, le=10**12, description="minor units (fen)"),
                      ACCEPT_WHOLE_FLOATS]
    currency: Literal["CNY"]
    method: Literal["alipay", "wechat", "card", "balance"]


class AvailabilityQuery(_Schema):
    # Unknown query parameters (cache busters, tracking) are ignored, not forwarded.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    address: Address
    product: Product


# Query models made only of required normalised text fields, with each field's length limit:
# validation.py checks these by hand on the hot path (the same normalising, the same limits)
# and leaves whatever it would refuse to pydantic, for its field errors.
TEXT_QUERIES: dict[type[BaseModel], tuple[tuple[str, int], ...]] = {
    AvailabilityQuery: (("address", ADDRESS_MAX), ("product", PRODUCT_MAX)),
}


class AvailabilityResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    available: bool
    address: str
    product: str


class OrderResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    order_id: str
    status: str
    product: str | None = None
    address: str | None = None


class PaymentResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    payment_id: str
    status: Literal["succeeded"] | str
    order_id: str
    amount: int


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class QueuePlace(BaseModel):
    """A waiting ticket's place: `position` 1 is next in; `eta_s` null while paused. In a
    scheduled sale's pre-queue, `position` and `eta_s` are null and `starts_in_s` says
    when the draw gives everyone a place."""

    ticket: str | None = None  # in a 429 QUEUED; a poll already names it
    position: int | None = Field(ge=1)
    eta_s: int | None = Field(ge=0)
    starts_in_s: int | None = Field(None, ge=1)  # only in a pre-queue
    poll_after_s: int = Field(ge=1)


class QueueState(BaseModel):
    """`GET /v1/queue/{ticket}`: still waiting, or admitted with a pass."""

    state: Literal["waiting", "admitted"]
    position: int | None = Field(None, ge=1)  # null in a sale's pre-queue
    eta_s: int | None = Field(None, ge=0)
    starts_in_s: int | None = Field(None, ge=1)  # only in a sale's pre-queue
    poll_after_s: int | None = Field(None, ge=1)
    # `pass` is a Python keyword; the field is named so on the wire.
    pass_: str | None = Field(None, alias="pass")
    pass_expires_at: datetime | None = None


class WaitingRoomStatus(BaseModel):
    enabled: bool
    queueing: bool
    waiting: int = Field(ge=0)
    eta_s: int | None = Field(ge=0)  # 0 when not queueing, null while paused or before a sale
    sale_starts_at: datetime | None  # a scheduled sale's start, or null


class Problem(BaseModel):
    """RFC 9457 problem details, as every gateway-made error is answered."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str
    retryable: bool
    hint: str
    errors: list[FieldError] | None = None
    announcement: str | None = None  # MAINTENANCE: the window's message, in the client's language
    maintenance: dict[str, Any] | None = None  # MAINTENANCE: id, scope, read_only, ends_at
    queue: QueuePlace | None = None  # QUEUED: the ticket and its place


class BackendHealth(BaseModel):
    health: Literal["up", "degraded", "down"]
    maintenance: bool  # a current window covers the whole backend


class MaintenanceWindowView(BaseModel):
    """A maintenance window as the status page and the admin API show it."""

    id: str
    scope: str
    read_only: bool
    starts_at: str
    ends_at: str | None
    message: dict[str, str]  # "en" and "zh-CN"
    state: Literal["current", "scheduled"]
    source: Literal["config", "admin"]
    announcement: str | None = None  # on the status page: the message in the client's language


class MaintenanceView(BaseModel):
    current: list[MaintenanceWindowView]
    scheduled: list[MaintenanceWindowView]


class StatusResponse(BaseModel):
    status: Literal["ok", "degraded", "maintenance"]
    maintenance: MaintenanceView
    backends: dict[str, BackendHealth]
    waiting_room: WaitingRoomStatus
