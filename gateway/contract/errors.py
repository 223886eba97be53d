"""The catalog of every error the gateway itself produces.

Each error is a value (`ErrorSpec`) with a stable code, an HTTP status, whether
a client may retry, and its human text in English, Simplified Chinese and
Traditional Chinese (`LANGUAGES`). Code anywhere in the gateway raises
`GatewayError(SPEC, ...)`; one place (`gateway/contract/problem.py`) renders it as
`application/problem+json`.

    GatewayError                 raised with one of the specs below
      edge refusals              VALIDATION_FAILED, MALFORMED_JSON, PAYLOAD_TOO_LARGE,
                                 UNSUPPORTED_MEDIA_TYPE, IDEMPOTENCY_KEY_MISSING,
                                 IDEMPOTENCY_KEY_REUSED, UNAUTHORIZED, FORBIDDEN, NOT_FOUND,
                                 METHOD_NOT_ALLOWED, MALFORMED_REQUEST, URI_TOO_LONG,
                                 HEADERS_TOO_LARGE, REQUEST_TIMEOUT
      protective answers         MAINTENANCE, CIRCUIT_OPEN, OVERLOADED, RATE_LIMITED,
                                 QUEUED, QUEUE_TICKET_EXPIRED, IDEMPOTENCY_IN_PROGRESS,
                                 STATE_UNAVAILABLE
      backend failures           UPSTREAM_UNAVAILABLE, UPSTREAM_TIMEOUT,
                                 PAYMENT_OUTCOME_UNKNOWN
      admin refusals             SETTING_CONFLICT
      our own bug                INTERNAL_ERROR

This module imports nothing of the gateway, so every layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

TYPE_BASE = "https://errors.order-gateway.dev/"
# English, Simplified Chinese (mainland) and Traditional Chinese (Taiwan, Hong Kong, Macao).
LANGUAGES = ("en", "zh-CN", "zh-Hant")


@dataclass(frozen=True, slots=True)
class Text:
    """One message in every supported language. The Traditional text is written for readers
    in Taiwan and Hong Kong (their words where they differ), not converted characters."""

    en: str
    zh: str
    hant: str

    def get(self, lang: str) -> str:
        if lang == "zh-CN":
            return self.zh
        return self.hant if lang == "zh-Hant" else self.en


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    code: str
    status: int
    retryable: bool
    title: Text
    detail: Text
    hint: Text
    # Seconds a client should wait before retrying, when nothing more precise is known.
    retry_after_s: int | None = None

    @property
    def type_uri(self) -> str:
        return TYPE_BASE + self.code.lower().replace("_", "-")


@dataclass
class GatewayError(Exception):
    """An answer the gateway gives instead of (or after) calling a backend.

    `params` fill the `{placeholders}` of the detail text; `extra` adds
    members to the problem body (field `errors`, `announcement`, ...);
    `headers` adds response headers (`Allow`). `reached_backend` says the
    request may have been received by a backend before this error, so its
    effect there is unknown (idempotency keeps such a record for reconciling).
    """

    spec: ErrorSpec
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    retry_after_s: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reached_backend: bool = False

    def __str__(self) -> str:
        return f"{self.spec.code}: {self.spec.detail.en.format_map(_Lenient(self.params))}"

    @property
    def retry_after(self) -> int | None:
        if not self.spec.retryable:
            return None
        value = self.retry_after_s if self.retry_after_s is not None else self.spec.retry_after_s
        return max(1, int(value)) if value is not None else 1


class _Lenient(dict[str, Any]):
    """Leaves an unknown placeholder visible instead of failing to render an error."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render_detail(err: GatewayError, lang: str) -> str:
    return err.spec.detail.get(lang).format_map(_Lenient(err.params))


def _spec(code: str, status: int, retryable: bool, retry_after_s: int | None = None, *,
          title: tuple[str, str, str], detail: tuple[str, str, str],
          hint: tuple[str, str, str]) -> ErrorSpec:
    return ErrorSpec(code, status, retryable, Text(*title), Text(*detail), Text(*hint),
                     retry_after_s)


VALIDATION_FAILED = _spec(
    "VALIDATION_FAILED", 422, False,
    title=("Request is not valid",
           "请求内容不合法",
           "請求內容不正確"),
    detail=("{count} field(s) failed validation.",
            "有 {count} 个字段未通过校验。",
            "有 {count} 個欄位未通過驗證。"),
    hint=("Correct the fields listed in `errors` and send the request again.",
          "请按 errors 中列出的字段修改后重新提交。",
          "請依 errors 列出的欄位修正後重新送出。"),
)
MALFORMED_JSON = _spec(
    "MALFORMED_JSON", 400, False,
    title=("Body is not valid JSON",
           "请求体不是合法的 JSON",
           "請求主體不是有效的 JSON"),
    detail=("The request body could not be parsed as JSON: {reason}.",
            "请求体无法按 JSON 解析：{reason}。",
            "無法將請求主體解析為 JSON：{reason}。"),
    hint=("Send a UTF-8 JSON object.",
          "请发送 UTF-8 编码的 JSON 对象。",
          "請傳送 UTF-8 編碼的 JSON 物件。"),
)
PAYLOAD_TOO_LARGE = _spec(
    "PAYLOAD_TOO_LARGE", 413, False,
    title=("Request body too large",
           "请求体过大",
           "請求主體過大"),
    detail=("The body exceeds the limit of {limit} bytes.",
            "请求体超过 {limit} 字节的上限。",
            "請求主體超過 {limit} 位元組的上限。"),
    hint=("Send a smaller request.",
          "请缩小请求内容后重试。",
          "請縮小請求內容後再試一次。"),
)
UNSUPPORTED_MEDIA_TYPE = _spec(
    "UNSUPPORTED_MEDIA_TYPE", 415, False,
    title=("Unsupported content type",
           "不支持的内容类型",
           "不支援的內容類型"),
    detail=("This route accepts only application/json, not '{content_type}'.",
            "此接口只接受 application/json，而不是“{content_type}”。",
            "此介面只接受 application/json，而非「{content_type}」。"),
    hint=("Set the header Content-Type: application/json.",
          "请设置请求头 Content-Type: application/json。",
          "請設定請求標頭 Content-Type: application/json。"),
)
IDEMPOTENCY_KEY_MISSING = _spec(
    "IDEMPOTENCY_KEY_MISSING", 400, False,
    title=("Idempotency-Key header required",
           "缺少 Idempotency-Key 请求头",
           "缺少 Idempotency-Key 請求標頭"),
    detail=("Orders and payments must carry an Idempotency-Key header.",
            "下单和支付请求必须携带 Idempotency-Key 请求头。",
            "下單與付款請求必須附上 Idempotency-Key 請求標頭。"),
    hint=("Generate a unique key (a UUID) per order or payment and reuse it on every "
          "resubmission.",
          "请为每笔订单或支付生成唯一的键（如 UUID），重新提交时使用同一个键。",
          "請為每筆訂單或付款產生唯一的鍵（例如 UUID），重新送出時沿用同一個鍵。"),
)
IDEMPOTENCY_KEY_REUSED = _spec(
    "IDEMPOTENCY_KEY_REUSED", 422, False,
    title=("Idempotency-Key reused with a different request",
           "幂等键被用于不同的请求",
           "冪等鍵被用於不同的請求"),
    detail=("This Idempotency-Key was first used with a different request body.",
            "该幂等键此前已用于内容不同的请求。",
            "此冪等鍵先前已用於內容不同的請求。"),
    hint=("Use a new key for a new request; resubmit the original body to get its result.",
          "新请求请使用新的键；如需原结果，请提交与原请求相同的内容。",
          "新的請求請使用新的鍵；如需原本的結果，請送出與原請求相同的內容。"),
)
IDEMPOTENCY_IN_PROGRESS = _spec(
    "IDEMPOTENCY_IN_PROGRESS", 409, True, 1,
    title=("Request with this key still in progress",
           "相同幂等键的请求仍在处理中",
           "相同冪等鍵的請求仍在處理中"),
    detail=("The first request with this Idempotency-Key has not finished yet.",
            "使用该幂等键的第一个请求尚未完成。",
            "使用此冪等鍵的第一個請求尚未完成。"),
    hint=("Wait a moment, then resubmit with the same key to get the result.",
          "请稍候，再用同一个键重新提交以获取结果。",
          "請稍候，再以同一個鍵重新送出以取得結果。"),
)
MAINTENANCE = _spec(
    "MAINTENANCE", 503, True, 300,
    title=("Under maintenance",
           "系统维护中",
           "系統維護中"),
    detail=("This service is under planned maintenance.",
            "该服务正在进行计划内维护。",
            "此服務正在進行預定的維護。"),
    hint=("Try again after the time in Retry-After; the announcement says more.",
          "请在 Retry-After 指定的时间后重试，详情见维护公告。",
          "請在 Retry-After 指定的時間後再試，詳情請見維護公告。"),
)
CIRCUIT_OPEN = _spec(
    "CIRCUIT_OPEN", 503, True, 5,
    title=("Service temporarily unavailable",
           "服务暂时不可用",
           "服務暫時無法使用"),
    detail=("The {backend} service is failing and calls to it are paused.",
            "{backend} 服务出现故障，已暂停对其调用。",
            "{backend} 服務發生故障，已暫停對其呼叫。"),
    hint=("Try again after the time in Retry-After.",
          "请在 Retry-After 指定的时间后重试。",
          "請在 Retry-After 指定的時間後再試。"),
)
OVERLOADED = _spec(
    "OVERLOADED", 503, True, 1,
    title=("Too busy right now",
           "系统繁忙",
           "系統忙碌中"),
    detail=("The gateway is at capacity and could not take this request.",
            "网关当前负载已满，无法处理此请求。",
            "閘道目前已滿載，無法處理此請求。"),
    hint=("Try again after the time in Retry-After.",
          "请在 Retry-After 指定的时间后重试。",
          "請在 Retry-After 指定的時間後再試。"),
)
RATE_LIMITED = _spec(
    "RATE_LIMITED", 429, True, 1,
    title=("Too many requests",
           "请求过于频繁",
           "請求過於頻繁"),
    detail=("This client has sent more requests than its rate limit allows.",
            "该客户端的请求数超过了限额。",
            "此用戶端的請求數已超過限額。"),
    hint=("Slow down and retry after the time in Retry-After.",
          "请降低请求频率，并在 Retry-After 指定的时间后重试。",
          "請降低請求頻率，並在 Retry-After 指定的時間後再試。"),
)
QUEUED = _spec(
    "QUEUED", 429, True, 1,
    title=("You are in the queue",
           "您正在排队",
           "您正在排隊"),
    detail=("Many customers are ordering right now; you have a place in the queue.",
            "当前下单人数较多，您已进入排队。",
            "目前下單人數眾多，您已進入排隊。"),
    hint=("Keep this page open: poll GET /v1/queue/{ticket} (or resubmit with "
          "X-Queue-Ticket) after Retry-After seconds; you will be let in in turn.",
          "请保持页面开启：在 Retry-After 秒后查询 GET /v1/queue/{ticket}"
          "（或携带 X-Queue-Ticket 重新提交），轮到您时即可进入。",
          "請保持頁面開啟：在 Retry-After 秒後查詢 GET /v1/queue/{ticket}"
          "（或附上 X-Queue-Ticket 重新送出），輪到您時即可進入。"),
)
QUEUE_TICKET_EXPIRED = _spec(
    "QUEUE_TICKET_EXPIRED", 410, False,
    title=("Your place in the queue has lapsed",
           "排队已失效",
           "排隊已失效"),
    detail=("This queue ticket was not polled in time and lost its place.",
            "该排队号未按时查询，已失去排队位置。",
            "此排隊號碼未按時查詢，已失去排隊位置。"),
    hint=("Start again without the ticket to join the queue anew.",
          "请不带排队号重新发起请求，重新排队。",
          "請不帶排隊號碼重新送出請求，重新排隊。"),
)
UPSTREAM_UNAVAILABLE = _spec(
    "UPSTREAM_UNAVAILABLE", 502, True, 1,
    title=("Service unavailable",
           "后端服务不可用",
           "後端服務無法使用"),
    detail=("The {backend} service could not be reached or gave an invalid answer.",
            "无法连接 {backend} 服务，或其返回了无效应答。",
            "無法連線至 {backend} 服務，或其傳回了無效的回應。"),
    hint=("Try again shortly; if it persists, contact support with the request id.",
          "请稍后重试；如持续出现，请携带请求编号联系客服。",
          "請稍後再試；若持續發生，請附上請求編號聯絡客服。"),
)
UPSTREAM_TIMEOUT = _spec(
    "UPSTREAM_TIMEOUT", 504, True, 1,
    title=("Service did not answer in time",
           "后端服务响应超时",
           "後端服務回應逾時"),
    detail=("The {backend} service did not answer within {timeout_s} seconds.",
            "{backend} 服务未在 {timeout_s} 秒内响应。",
            "{backend} 服務未在 {timeout_s} 秒內回應。"),
    hint=("Try again shortly; if it persists, contact support with the request id.",
          "请稍后重试；如持续出现，请携带请求编号联系客服。",
          "請稍後再試；若持續發生，請附上請求編號聯絡客服。"),
)
PAYMENT_OUTCOME_UNKNOWN = _spec(
    "PAYMENT_OUTCOME_UNKNOWN", 502, True, 2,
    title=("Payment outcome not yet known",
           "支付结果暂未确认",
           "付款結果尚未確認"),
    detail=("The payment was sent but its result could not be confirmed.",
            "支付请求已发出，但暂时无法确认结果。",
            "付款請求已送出，但暫時無法確認結果。"),
    hint=("Do not pay again with a new key: resubmit with the same Idempotency-Key to get "
          "the confirmed result.",
          "请勿使用新键重新支付：请用同一个 Idempotency-Key 重新提交以获取确认结果。",
          "請勿以新的鍵重新付款：請用同一個 Idempotency-Key 重新送出以取得確認的結果。"),
)
STATE_UNAVAILABLE = _spec(
    "STATE_UNAVAILABLE", 503, True, 2,
    title=("Temporarily unable to process safely",
           "暂时无法安全处理",
           "暫時無法安全處理"),
    detail=("The gateway's shared state store is unreachable, or cannot yet keep a "
            "record of this request safe.",
            "网关的共享状态存储暂时不可用，或暂时无法安全保存此请求的记录。",
            "閘道的共用狀態儲存區暫時無法使用，或暫時無法安全保存此請求的紀錄。"),
    hint=("Try again after the time in Retry-After with the same Idempotency-Key.",
          "请在 Retry-After 指定的时间后使用同一个 Idempotency-Key 重试。",
          "請在 Retry-After 指定的時間後，以同一個 Idempotency-Key 再試。"),
)
UNAUTHORIZED = _spec(
    "UNAUTHORIZED", 401, False,
    title=("Authentication required",
           "需要身份认证",
           "需要身分驗證"),
    detail=("A valid credential is required for this resource.",
            "访问该资源需要有效的凭证。",
            "存取此資源需要有效的憑證。"),
    hint=("Send the admin token as Authorization: Bearer <token>, or the client's API key as X-A"
          "PI-Key.",
          "管理接口请发送 Authorization: Bearer <token>；客户端请发送 X-API-Key 请求头。",
          "管理介面請傳送 Authorization: Bearer <token>；用戶端請傳送 X-API-Key 請求標頭。"),
)
NOT_FOUND = _spec(
    "NOT_FOUND", 404, False,
    title=("Not found",
           "未找到",
           "找不到資源"),
    detail=("There is no resource at {path}.",
            "路径 {path} 不存在。",
            "路徑 {path} 不存在。"),
    hint=("Check the path against /openapi.json.",
          "请对照 /openapi.json 检查请求路径。",
          "請對照 /openapi.json 檢查請求路徑。"),
)
# NOT_FOUND as a waiting customer's app meets it (a ticket this client does not hold: never
# issued, forged, or another client's): the same code and status, words that say so
# rather than send a mobile developer to the API description.
TICKET_NOT_HELD = replace(
    NOT_FOUND,
    detail=Text("This ticket is not one this client holds.",
                "此排队凭证不属于当前客户端。",
                "此排隊憑證不屬於目前的用戶端。"),
    hint=Text("Poll the ticket your own 429 QUEUED answer gave, as the same client (the same "
              "X-Client-ID or API key); your next request takes a new place otherwise.",
              "请使用本客户端（相同的 X-Client-ID 或 API 密钥）收到的 429 QUEUED 应答中的凭证查询；"
              "否则下次请求会重新排队。",
              "請以同一用戶端（相同的 X-Client-ID 或 API 金鑰）查詢自己的 "
              "429 QUEUED 回應所給的憑證；否則下次請求會重新排隊。"))
METHOD_NOT_ALLOWED = _spec(
    "METHOD_NOT_ALLOWED", 405, False,
    title=("Method not allowed",
           "不支持该请求方法",
           "不支援此請求方法"),
    detail=("{method} is not allowed on {path}.",
            "路径 {path} 不支持 {method} 方法。",
            "路徑 {path} 不支援 {method} 方法。"),
    hint=("Use one of the methods in the Allow header.",
          "请使用 Allow 响应头中列出的方法。",
          "請使用 Allow 回應標頭中列出的方法。"),
)
FORBIDDEN = _spec(
    "FORBIDDEN", 403, False,
    title=("Not allowed",
           "无权访问",
           "無權存取"),
    detail=("{who} may not {what}.",
            "{who} 无权执行：{what}。",
            "{who} 無權執行：{what}。"),
    hint=("Use a credential (or an origin) that is allowed this request.",
          "请使用有权发起此请求的凭证（或来源）。",
          "請使用有權發出此請求的憑證（或來源）。"),
)
SETTING_CONFLICT = _spec(
    "SETTING_CONFLICT", 409, False,
    title=("Conflicts with a setting",
           "与配置冲突",
           "與設定衝突"),
    detail=("{what} would have no effect while {setting} is {value}.",
            "当 {setting} 为 {value} 时，{what}不会生效。",
            "當 {setting} 為 {value} 時，{what}不會生效。"),
    hint=("Change the setting the detail names in the gateway's configuration first, then "
          "try again.",
          "请先在网关配置中修改详情中所列的配置项，然后重试。",
          "請先在閘道設定中修改詳細說明所列的設定項，再試一次。"),
)
MALFORMED_REQUEST = _spec(
    "MALFORMED_REQUEST", 400, False,
    title=("Malformed HTTP request",
           "HTTP 请求格式错误",
           "HTTP 請求格式錯誤"),
    detail=("The request is not well-formed HTTP/1.1 ({reason}).",
            "该请求不是格式正确的 HTTP/1.1 请求（{reason}）。",
            "此請求不是格式正確的 HTTP/1.1 請求（{reason}）。"),
    hint=("Send one Content-Length or Transfer-Encoding: chunked, never both, and "
          "well-formed headers.",
          "请只使用 Content-Length 或 Transfer-Encoding: chunked 之一，并发送格式正确的请求头。",
          "請只使用 Content-Length 或 Transfer-Encoding: chunked 其中之一，"
          "並傳送格式正確的請求標頭。"),
)
URI_TOO_LONG = _spec(
    "URI_TOO_LONG", 414, False,
    title=("URL too long",
           "URL 过长",
           "網址過長"),
    detail=("The request line exceeds the limit of {limit} bytes.",
            "请求行超过 {limit} 字节的上限。",
            "請求列超過 {limit} 位元組的上限。"),
    hint=("Shorten the URL; send large inputs in a JSON body.",
          "请缩短 URL；较大的输入请放在 JSON 请求体中发送。",
          "請縮短網址；較大的輸入請放在 JSON 請求主體中傳送。"),
)
HEADERS_TOO_LARGE = _spec(
    "HEADERS_TOO_LARGE", 431, False,
    title=("Request headers too large",
           "请求头过大",
           "請求標頭過大"),
    detail=("The request has more than {count} headers or a header over {limit} bytes.",
            "请求头超过 {count} 个，或单个请求头超过 {limit} 字节。",
            "請求標頭超過 {count} 個，或單一標頭超過 {limit} 位元組。"),
    hint=("Send fewer and smaller headers (cookies included).",
          "请减少请求头的数量和大小（包括 Cookie）。",
          "請減少請求標頭的數量與大小（包括 Cookie）。"),
)
REQUEST_TIMEOUT = _spec(
    "REQUEST_TIMEOUT", 408, True, 1,
    title=("Request not received in time",
           "请求接收超时",
           "請求接收逾時"),
    detail=("The {part} of the request did not arrive within {timeout_s} seconds.",
            "请求的 {part} 未在 {timeout_s} 秒内到达。",
            "請求的 {part} 未在 {timeout_s} 秒內送達。"),
    hint=("Send the whole request at once, then try again.",
          "请一次发送完整请求后重试。",
          "請一次送出完整的請求後再試。"),
)
INTERNAL_ERROR = _spec(
    "INTERNAL_ERROR", 500, True, 1,
    title=("Internal error",
           "内部错误",
           "內部錯誤"),
    detail=("The gateway failed to handle this request.",
            "网关处理该请求时出错。",
            "閘道處理此請求時發生錯誤。"),
    hint=("Try again; if it persists, contact support with the request id.",
          "请重试；如持续出现，请携带请求编号联系客服。",
          "請再試一次；若持續發生，請附上請求編號聯絡客服。"),
)

CATALOG: dict[str, ErrorSpec] = {
    spec.code: spec
    for spec in (
        VALIDATION_FAILED, MALFORMED_JSON, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE,
        IDEMPOTENCY_KEY_MISSING, IDEMPOTENCY_KEY_REUSED, IDEMPOTENCY_IN_PROGRESS, MAINTENANCE,
        CIRCUIT_OPEN, OVERLOADED, RATE_LIMITED, QUEUED, QUEUE_TICKET_EXPIRED,
        UPSTREAM_UNAVAILABLE, UPSTREAM_TIMEOUT,
        PAYMENT_OUTCOME_UNKNOWN, STATE_UNAVAILABLE, UNAUTHORIZED, NOT_FOUND,
        METHOD_NOT_ALLOWED, FORBIDDEN, SETTING_CONFLICT, MALFORMED_REQUEST, URI_TOO_LONG,
        HEADERS_TOO_LARGE, REQUEST_TIMEOUT, INTERNAL_ERROR,
    )
}
