// The SRE console: live breakers, faults, maintenance, waiting room and timeline, and a form
// for every admin action. Plain script, no framework: it reads GET /admin/events with fetch()
// (so the token travels in a header, never in a URL) and calls the admin API. The token and
// the actor's name live in sessionStorage only.
"use strict";

const TEXT = {
  en: {
    title: "order-gateway console", offline: "offline", live: "live", token: "Admin token",
    actor: "Your name (shown in the timeline)", sign_in: "Sign in",
    denied: "The token was refused.", backends: "Backends", faults: "Faults",
    end_all_faults: "End all faults", scope: "Scope", abort_percent: "Abort %",
    abort_status: "Abort as (500-599 or reset)", delay_percent: "Delay %", delay_ms: "Delay ms",
    header_name: "Only with header", header_value: "with value", ttl_s: "Lasts (s)",
    add_fault: "Add fault", maintenance: "Maintenance", read_only: "Read-only",
    minutes: "Minutes (empty: until ended)", message_en: "Message (English)",
    message_zh: "Message (Chinese)", open_window: "Open window", waiting_room: "Waiting room",
    enabled: "Enabled", admit_per_s: "Admit per second", queue_all: "Everyone queues",
    apply: "Apply", timeline: "Timeline", change_setting: "Change setting", end: "End",
    open: "Open", close: "Close", reset: "Reset", calls: "calls/s", failures: "failure rate",
    slow: "slow calls", p99: "p99 ms", none: "none", waiting: "waiting",
    admitted: "admitted", failed: "Failed:", api_keys: "Client API keys",
    client_id: "Client id", role: "Role", tier: "Tier", add_key: "Add key",
    revoke: "Revoke", new_key: "New key (shown once):", disabled: "Off", until: "until",
    until_ended: "until ended", from: "from", under_maintenance: "maintenance",
    forced: "forced", sale_starts_at: "Sale starts at (your time)", sale_in: "Sale starts in",
    sale_started: "Sale started", sale_off: "Call off the sale",
  },
  "zh-CN": {
    title: "order-gateway 控制台", offline: "离线", live: "实时", token: "管理令牌",
    actor: "您的名字（显示在时间线中）", sign_in: "登录", denied: "令牌被拒绝。",
    backends: "后端", faults: "故障注入", end_all_faults: "结束全部故障", scope: "范围",
    abort_percent: "中止比例 %", abort_status: "中止方式（500-599 或 reset）",
    delay_percent: "延迟比例 %", delay_ms: "延迟毫秒", header_name: "仅限请求头",
    header_value: "取值", ttl_s: "持续（秒）", add_fault: "添加故障", maintenance: "维护窗口",
    read_only: "只读", minutes: "分钟（留空：直到结束）", message_en: "公告（英文）",
    message_zh: "公告（中文）", open_window: "开启窗口", waiting_room: "排队等候室",
    enabled: "启用", admit_per_s: "每秒放行", queue_all: "全部排队", apply: "应用",
    timeline: "时间线", change_setting: "修改设置", end: "结束", open: "断开", close: "闭合",
    reset: "复位", calls: "调用/秒", failures: "失败率", slow: "慢调用", p99: "p99 毫秒",
    none: "无", waiting: "等待中", admitted: "已放行", failed: "失败：",
    api_keys: "客户端 API 密钥", client_id: "客户端 ID", role: "角色", tier: "等级",
    add_key: "添加密钥", revoke: "吊销", new_key: "新密钥（仅显示一次）：",
    disabled: "未启用", until: "至", until_ended: "直到手动结束", from: "开始于",
    under_maintenance: "维护中", forced: "人工设定", sale_starts_at: "抢购开始时间（本地）",
    sale_in: "距抢购开始", sale_started: "抢购已开始", sale_off: "取消抢购",
  },
  "zh-Hant": {
    title: "order-gateway 控制台", offline: "離線", live: "即時", token: "管理權杖",
    actor: "您的名字（顯示在時間軸中）", sign_in: "登入", denied: "權杖遭拒。",
    backends: "後端", faults: "故障注入", end_all_faults: "結束所有故障", scope: "範圍",
    abort_percent: "中止比例 %", abort_status: "中止方式（500-599 或 reset）",
    delay_percent: "延遲比例 %", delay_ms: "延遲毫秒", header_name: "僅限標頭",
    header_value: "值", ttl_s: "持續（秒）", add_fault: "新增故障", maintenance: "維護時段",
    read_only: "唯讀", minutes: "分鐘（留空：直到結束）", message_en: "公告（英文）",
    message_zh: "公告（中文）", open_window: "開啟時段",
    waiting_room: "排隊等候室", enabled: "啟用", admit_per_s: "每秒放行",
    queue_all: "全部排隊", apply: "套用", timeline: "時間軸", change_setting: "修改設定",
    end: "結束", open: "斷開", close: "閉合", reset: "重設", calls: "呼叫/秒",
    failures: "失敗率", slow: "慢速呼叫", p99: "p99 毫秒", none: "無", waiting: "等候中",
    admitted: "已放行", failed: "失敗：", api_keys: "用戶端 API 金鑰",
    client_id: "用戶端 ID", role: "角色", tier: "等級", add_key: "新增金鑰",
    revoke: "撤銷", new_key: "新金鑰（僅顯示一次）：",
    disabled: "未啟用", until: "至", until_ended: "直到手動結束", from: "開始於",
    under_maintenance: "維護中", forced: "人工設定", sale_starts_at: "搶購開始時間（本地）",
    sale_in: "距搶購開始", sale_started: "搶購已開始", sale_off: "取消搶購",
  },
};
// The browser's languages in its order, as the gateway negotiates Accept-Language: English;
// Traditional for zh-Hant and Taiwan, Hong Kong, Macao; Simplified for any other Chinese.
const languageOf = (tag) => {
  const subtags = String(tag).toLowerCase().split("-");
  if (subtags[0] === "en") return "en";
  if (subtags[0] !== "zh") return null;
  if (subtags.includes("hant")) return "zh-Hant";
  if (subtags.includes("hans")) return "zh-CN";
  return subtags.some((s) => ["tw", "hk", "mo"].includes(s)) ? "zh-Hant" : "zh-CN";
};
const LANG = (navigator.languages || [navigator.language]).map(languageOf)
  .find((lang) => lang !== null) || "en";
const t = (key) => TEXT[LANG][key] || TEXT.en[key] || key;
// The backends, their routes and the breaker settings, as this gateway's /openapi.json
// describes them (a proxied route is tagged with its backend): nothing of them written here.
async function described() {
  const response = await fetch("/openapi.json");
  const doc = await response.json();
  const backends = [], routes = [];
  for (const [path, operations] of Object.entries(doc.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const backend = (operation.tags || [])[0];
      if (!path.startsWith("/v1/") || !backend) continue;
      const route = method.toUpperCase() + " " + path;
      routes.push(route);
      ROUTE_BACKEND[route] = backend;
      if (!backends.includes(backend)) backends.push(backend);
    }
  }
  const settings = Object.keys(doc.components.schemas.BreakerSettings.properties);
  return { backends, scopes: ["all", ...backends, ...routes], settings };
}
const ROUTE_BACKEND = {};  // "GET /v1/orders/{order_id}" -> "order", from /openapi.json

// A moment as the reader's local clock shows it; the exact ISO value on hover.
function when(iso) {
  const moment = new Date(iso);
  const sameDay = moment.toDateString() === new Date().toDateString();
  const text = sameDay ? moment.toLocaleTimeString(LANG) : moment.toLocaleString(LANG);
  return el("time", { datetime: iso, title: iso, text });
}

// Whether a current maintenance window covers this backend (all, the backend, or a route).
function maintained(backend, windows) {
  return windows.some((w) => w.state === "current" && (w.scope === "all" || w.scope === backend
    || ROUTE_BACKEND[w.scope] === backend));
}

const $ = (selector) => document.querySelector(selector);
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value; else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function headers() {
  const sent = { Authorization: "Bearer " + sessionStorage.getItem("og-token"),
    "Content-Type": "application/json" };
  const actor = sessionStorage.getItem("og-actor");
  if (actor) sent["X-Admin-Actor"] = actor;
  return sent;
}

async function api(method, path, body) {
  const response = await fetch(path, { method, headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  return { status: response.status, data };
}

// -- forms -----------------------------------------------------------------------------------

function showErrors(form, answer) {
  form.querySelectorAll(".field-error").forEach((span) => { span.textContent = ""; });
  if (answer.status < 400) return true;
  const errors = (answer.data && answer.data.errors) || [];
  for (const error of errors) {
    const spans = [...form.querySelectorAll(".field-error")];
    const span = spans.find((s) => error.field === s.dataset.field
      || error.field.startsWith(s.dataset.field + "."))
      || form.querySelector('.field-error[data-field="body"]') || spans[spans.length - 1];
    if (span) span.textContent = (span.textContent ? span.textContent + " " : "") + error.message;
  }
  if (!errors.length) {
    const span = form.querySelector(".field-error");
    if (span) span.textContent = t("failed") + " " + ((answer.data && answer.data.title) || answer.status);
  }
  return false;
}

function number(value) {
  return value.trim() === "" ? undefined : Number(value);
}

function faultBody(form) {
  const get = (name) => form.elements[name].value.trim();
  const body = { scope: get("scope"), ttl_s: number(get("ttl_s")) };
  if (get("abort.percent") !== "") {
    const status = get("abort.status");
    body.abort = { percent: number(get("abort.percent")),
      status: status === "reset" ? "reset" : number(status) };
  }
  if (get("delay.percent") !== "") {
    body.delay = { percent: number(get("delay.percent")), ms: number(get("delay.ms")) };
  }
  if (get("match_header.name") !== "") {
    body.match_header = { name: get("match_header.name"), value: get("match_header.value") };
  }
  return body;
}

function windowBody(form) {
  const minutes = form.elements.minutes.value.trim();
  return {
    scope: form.elements.scope.value, read_only: form.elements.read_only.checked,
    starts_at: null,
    ends_at: minutes === "" ? null : new Date(Date.now() + Number(minutes) * 60000).toISOString(),
    // Chinese in the reader's own script; the gateway converts it to the other one.
    message: { en: form.elements["message.en"].value,
      [LANG === "zh-Hant" ? "zh-Hant" : "zh-CN"]: form.elements["message.zh-CN"].value },
  };
}

function wire({ backends, scopes, settings }) {
  for (const select of document.querySelectorAll("select.scopes")) {
    for (const scope of scopes) select.append(el("option", { value: scope, text: scope }));
  }
  const breakerForm = $("#breaker-form");
  for (const name of backends) {
    breakerForm.elements.name.append(el("option", { value: name, text: name }));
  }
  for (const name of settings) breakerForm.elements.setting.append(el("option", { value: name, text: name }));
  breakerForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const answer = await api("PUT", "/admin/breakers/" + form.elements.name.value,
      { [form.elements.setting.value]: number(form.elements.value.value) });
    showErrors(form, answer.status === 422 ? { ...answer, data: { errors: (answer.data.errors || [])
      .map((e) => ({ ...e, field: "value" })) } } : answer);
  });
  $("#fault-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (showErrors(event.target, await api("PUT", "/admin/faults", faultBody(event.target)))) refresh();
  });
  $("#end-all-faults").addEventListener("click", async () => {
    await api("DELETE", "/admin/faults");
    refresh();
  });
  $("#maintenance-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (showErrors(event.target, await api("PUT", "/admin/maintenance", windowBody(event.target)))) refresh();
  });
  $("#key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const answer = await api("POST", "/admin/api-keys", { client_id: form.elements.client_id.value,
      role: form.elements.role.value, tier: form.elements.tier.value });
    $("#new-key").textContent = "";
    if (showErrors(form, answer)) {
      $("#new-key").textContent = `${t("new_key")} ${answer.data.key}`;
      refresh();
    }
  });
  $("#room-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const body = { enabled: form.elements.enabled.checked, queue_all: form.elements.queue_all.checked };
    const rate = number(form.elements.admit_per_s.value);
    if (rate !== undefined) body.admit_per_s = rate;
    // The reader's local time, sent as UTC; an empty field leaves the sale as it is.
    const sale = form.elements.sale_starts_at.value;
    if (sale) body.sale_starts_at = new Date(sale).toISOString();
    if (showErrors(form, await api("PUT", "/admin/waiting-room", body))) refresh();
  });
  $("#sale-off").addEventListener("click", async () => {
    $("#room-form").elements.sale_starts_at.value = "";
    if (showErrors($("#room-form"), await api("PUT", "/admin/waiting-room",
      { sale_starts_at: null }))) refresh();
  });
  setInterval(showSale, 1000);
}

// -- what is shown -----------------------------------------------------------------------------

function sparkline(values) {
  values = values.length ? values : [0];
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 60 32");
  svg.setAttribute("preserveAspectRatio", "none");
  const top = Math.max(1, ...values);
  const points = values.map((v, i) => `${i + 60 - values.length},${31 - (v / top) * 30}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(line);
  return svg;
}

function tile(breaker, traffic, underMaintenance) {
  const figures = traffic || { calls_per_s: 0, failure_rate: 0, p99_ms: 0 };
  const attrs = { class: "tile", "data-breaker": breaker.name, "data-state": breaker.state };
  if (breaker.forced) attrs["data-forced"] = breaker.forced;
  if (underMaintenance) attrs["data-maintenance"] = "current";
  const box = el("div", attrs);
  const state = [breaker.state, breaker.forced ? t("forced") : "",
    underMaintenance ? t("under_maintenance") : ""].filter(Boolean).join(" · ");
  box.append(el("h3", {}, el("span", { text: breaker.name }), el("span", { text: state })));
  const dl = el("dl");
  const row = (label, value) => dl.append(el("dt", { text: label }), el("dd", { text: value }));
  row(t("calls"), figures.calls_per_s.toFixed(1));
  row(t("failures"), (100 * figures.failure_rate).toFixed(1) + " %");
  row(t("slow"), (100 * breaker.window.slow_call_rate).toFixed(1) + " %");
  row(t("p99"), figures.p99_ms === null ? "-" : String(Math.round(figures.p99_ms)));
  // The server's last minute, second by second: whole from the first snapshot.
  box.append(dl, sparkline(figures.recent_calls_per_s || [figures.calls_per_s]));
  for (const action of ["open", "close", "reset"]) {
    const button = el("button", { type: "button", "data-action": action, text: t(action) });
    button.addEventListener("click", async () => {
      await api("POST", `/admin/breakers/${breaker.name}/${action}`);
    });
    box.append(button, " ");
  }
  return box;
}

function endButton(path, label) {
  const button = el("button", { type: "button", text: label || t("end") });
  button.addEventListener("click", async () => { await api("DELETE", path); refresh(); });
  return button;
}

function render(snapshot) {
  $("#tiles").replaceChildren(...snapshot.breakers.map((b) => tile(
    b, snapshot.traffic[b.name], maintained(b.name, snapshot.maintenance))));
  $("#faults").replaceChildren(...(snapshot.faults.length ? snapshot.faults.map((f) => el("li",
    { "data-fault": f.id }, `${f.id} ${f.scope} ${f.abort ? "abort " + f.abort.percent + "% " + f.abort.status : ""}`
    + ` ${f.delay ? "delay " + f.delay.percent + "% " + f.delay.ms + "ms" : ""} · ${t("until")} `,
    when(f.expires_at), " ", endButton("/admin/faults/" + f.id))) : [el("li", { text: t("none") })]));
  $("#windows").replaceChildren(...(snapshot.maintenance.length ? snapshot.maintenance.map((w) => el("li",
    { "data-window": w.id, "data-state": w.state }, `${w.id} ${w.scope} ${w.read_only ? "read-only" : ""} `
    + `${w.message ? w.message[LANG] || w.message.en : ""} · `, ...period(w), " ",
    endButton("/admin/maintenance/" + w.id))) : [el("li", { text: t("none") })]));
  showRoom(snapshot.waiting_room);
}

// When a window acts: from its start if it is still to come, to its end or until ended.
function period(w) {
  const parts = [];
  if (w.state !== "current" && w.starts_at) parts.push(t("from") + " ", when(w.starts_at), " ");
  if (w.ends_at) parts.push(t("until") + " ", when(w.ends_at));
  else parts.push(t("until_ended"));
  return parts;
}

function showRoom(room) {
  const settings = room.settings || {};
  $("#room").textContent = [settings.enabled ? t("enabled") : t("disabled"),
    `${t("admit_per_s")} ${settings.admit_per_s}`, settings.queue_all ? t("queue_all") : "",
    `${t("waiting")} ${room.waiting}`, `${t("admitted")} ${room.admitted_total}`]
    .filter(Boolean).join(" · ");
  saleStartsAt = settings.sale_starts_at || null;
  showSale();
  // The form shows the settings in force, unless the SRE is editing it.
  const form = $("#room-form");
  if (form.contains(document.activeElement)) return;
  form.elements.enabled.checked = Boolean(settings.enabled);
  form.elements.queue_all.checked = Boolean(settings.queue_all);
  form.elements.admit_per_s.value = settings.admit_per_s ?? "";
  form.elements.sale_starts_at.value = saleStartsAt ? localInput(new Date(saleStartsAt)) : "";
}

let saleStartsAt = null;  // the scheduled sale's start (ISO), as the last snapshot said

// The countdown to the sale's start, to the second, then when it started.
function showSale() {
  const shown = $("#sale");
  if (!saleStartsAt) {
    shown.dataset.sale = "none";
    shown.replaceChildren();
    return;
  }
  const left = Math.ceil((new Date(saleStartsAt) - Date.now()) / 1000);
  shown.dataset.sale = left > 0 ? "scheduled" : "started";
  if (left > 0) {
    shown.replaceChildren(`${t("sale_in")} `, el("strong", { class: "countdown",
      text: clockTime(left) }), " · ", when(saleStartsAt));
  } else {
    shown.replaceChildren(`${t("sale_started")} `, when(saleStartsAt));
  }
}

// Seconds as h:mm:ss (m:ss under an hour).
function clockTime(seconds) {
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(s)}` : `${m}:${two(s)}`;
}

// A moment as a datetime-local field holds it: the reader's local time, to the second.
function localInput(moment) {
  const local = new Date(moment.getTime() - moment.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 19);
}

async function refresh() {
  const keys = await api("GET", "/admin/api-keys");
  if (keys.status === 200) {
    $("#keys").replaceChildren(...keys.data.api_keys.map((k) => el("li", { "data-key": k.key_id },
      `${k.client_id} · ${k.role} · ${k.tier} · ${k.key_id} (${k.source}) `,
      k.source === "admin" ? endButton("/admin/api-keys/" + k.key_id, t("revoke")) : "")));
  }
  const answer = await api("GET", "/admin/timeline?limit=50");
  if (answer.status !== 200) return;
  $("#timeline").replaceChildren(...answer.data.events.map((e) => el("li", {},
    when(e.at), el("span", { class: "kind", text: e.kind }),
    el("span", { class: "summary", text: e.summary + (e.actor ? ` (${e.actor})` : "")
      + ` · ${e.process}` }))));
}

// -- the live stream ---------------------------------------------------------------------------

async function follow() {
  for (;;) {
    try {
      const response = await fetch("/admin/events", { headers: headers() });
      if (response.status === 401) { signOut(t("denied")); return; }
      $("#live").textContent = t("live");
      $("#live").className = "on";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
          if (block.startsWith("event: snapshot") && data) { render(JSON.parse(data)); refresh(); }
        }
      }
    } catch (_) { /* the gateway restarted or the network blinked: try again */ }
    $("#live").textContent = t("offline");
    $("#live").className = "";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function signOut(message) {
  sessionStorage.removeItem("og-token");
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem("og-token", $("#admin-token").value);
  sessionStorage.setItem("og-actor", $("#admin-actor").value.trim());
  const answer = await api("GET", "/admin/breakers");
  if (answer.status !== 200) { signOut(t("denied")); return; }
  start();
}

function start() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  follow();
  refresh();
}

document.addEventListener("DOMContentLoaded", async () => {
  document.documentElement.lang = LANG;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  wire(await described());
  $("#login-form").addEventListener("submit", signIn);
  // The demo prints a link with the token in the fragment, which no request carries: it is
  // kept for this tab and taken out of the address bar at once.
  if (location.hash.startsWith("#token=")) {
    sessionStorage.setItem("og-token", decodeURIComponent(location.hash.slice(7)));
    window.history.replaceState(null, "", location.pathname + location.search);
  }
  if (sessionStorage.getItem("og-token")) start();
});
