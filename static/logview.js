// Goci's live log viewer: an ES module, no build step, no framework.
//
// Each `.log[data-lines-url]` in `#build` becomes a virtual window over its step's log:
// a scroll container as tall as every line, with only the lines near the viewport in
// the DOM, fetched a page of 1000 at a time from the JSON endpoint (builds/logs.py)
// and kept in a bounded cache. One WebSocket per page appends live lines; the database
// stays the record, so a gap in what the socket sent is fetched over HTTP.
//
// Safety: log text only ever reaches the DOM through createTextNode / textContent.
// ANSI SGR codes on a whitelist become CSS classes (static/logview.css); every other
// escape sequence and control character is dropped.

export const PAGE = 1000;
const MAX_PAGES = 40; // per step: at most 40,000 lines of text held in memory
// Browsers cap an element's height (Firefox near 17.9 million px, Chromium 33.5
// million); beyond this the scroll position maps onto the lines proportionally.
const MAX_PX = 16_000_000;
// Characters of one line put into the DOM; the rest is counted, not drawn.
export const LINE_CHARS = 10_000;
// A gap in the live lines up to this size is fetched before appending; a longer one
// (a long disconnection) is fetched page by page when it is scrolled to.
const GAP_FETCH_MAX = 5000;
const CONCURRENT_FETCHES = 2;
const RETRY_FAILED_MS = 3000;
const POLL_MS = 2000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const FINISHED = new Set(["success", "failure", "error", "canceled", "skipped"]);
const FAILED = new Set(["failure", "error"]);
const TIMESTAMPS_KEY = "goci.logview.timestamps";
const STATE_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  paused: "Live updates paused",
  finished: "Finished",
  unavailable: "This build is not available",
};

// ---------------------------------------------------------------------------
// ANSI: a whitelist of SGR codes into a style; everything else vanishes.

export const DEFAULT_STYLE = Object.freeze({
  bold: false,
  dim: false,
  italic: false,
  underline: false,
  fg: null, // 0-255 (xterm palette) or null for the default colour
  bg: null,
});

/** The style after the SGR sequence `ESC [ <params> m` ("1;31"; "" is a reset).
 * Codes outside the whitelist are ignored; 38;2 / 48;2 (24-bit) are skipped. */
export function parseSgr(params, style = DEFAULT_STYLE) {
  const number = (p) => (p === "" ? 0 : /^\d{1,3}$/.test(p) ? Number(p) : NaN);
  const codes = params === "" ? [0] : String(params).split(";").map(number);
  const s = { ...style };
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) Object.assign(s, DEFAULT_STYLE);
    else if (c === 1) s.bold = true;
    else if (c === 2) s.dim = true;
    else if (c === 3) s.italic = true;
    else if (c === 4) s.underline = true;
    else if (c === 22) s.bold = s.dim = false;
    else if (c === 23) s.italic = false;
    else if (c === 24) s.underline = false;
    else if (c >= 30 && c <= 37) s.fg = c - 30;
    else if (c === 39) s.fg = null;
    else if (c >= 40 && c <= 47) s.bg = c - 40;
    else if (c === 49) s.bg = null;
    else if (c >= 90 && c <= 97) s.fg = c - 90 + 8;
    else if (c >= 100 && c <= 107) s.bg = c - 100 + 8;
    else if (c === 38 || c === 48) {
      const key = c === 38 ? "fg" : "bg";
      if (codes[i + 1] === 5 && codes[i + 2] >= 0 && codes[i + 2] <= 255) {
        s[key] = codes[i + 2];
        i += 2;
      } else if (codes[i + 1] === 2) {
        i += 4; // 24-bit colour: not on the whitelist, its numbers are skipped
      } else {
        break; // malformed: the rest of the sequence cannot be read reliably
      }
    }
  }
  return s;
}

function sameStyle(a, b) {
  return (
    a.bold === b.bold &&
    a.dim === b.dim &&
    a.italic === b.italic &&
    a.underline === b.underline &&
    a.fg === b.fg &&
    a.bg === b.bg
  );
}

// ESC ] (OSC), ESC P (DCS), ESC X (SOS), ESC ^ (PM), ESC _ (APC)
const isStringIntroducer = (c) => c === 0x5d || c === 0x50 || c === 0x58 || c === 0x5e || c === 0x5f;
const isC1String = (c) => c === 0x9d || c === 0x90 || c === 0x98 || c === 0x9e || c === 0x9f;
const isPlain = (c) => (c >= 0x20 && c < 0x7f) || c === 0x09 || c > 0x9f;

/** What a line shows, as [{text, style}], adjacent equal styles merged.
 *
 * A carriage return starts the line again, as in a terminal, but instead of
 * overwriting character by character only the text after the last \r is shown (a
 * progress bar shows its final state; colours set before the \r still apply). A
 * trailing \r (a CRLF line end) is not a rewrite. */
export function segments(line) {
  let text = String(line);
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === 0x0d) end--;
  if (end !== text.length) text = text.slice(0, end);
  const out = [];
  let style = DEFAULT_STYLE;
  const push = (t) => {
    const last = out[out.length - 1];
    if (last && sameStyle(last.style, style)) last.text += t;
    else out.push({ text: t, style });
  };
  const n = text.length;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (isPlain(c)) {
      let j = i + 1;
      while (j < n && isPlain(text.charCodeAt(j))) j++;
      push(text.slice(i, j));
      i = j;
    } else if (c === 0x0d) {
      out.length = 0;
      i++;
    } else if (c === 0x9b || (c === 0x1b && text.charCodeAt(i + 1) === 0x5b)) {
      // CSI: parameters 0x30-0x3F, intermediates 0x20-0x2F, a final byte 0x40-0x7E.
      let j = c === 0x9b ? i + 1 : i + 2;
      const start = j;
      while (j < n && text.charCodeAt(j) >= 0x30 && text.charCodeAt(j) <= 0x3f) j++;
      const params = text.slice(start, j);
      const paramsEnd = j;
      while (j < n && text.charCodeAt(j) >= 0x20 && text.charCodeAt(j) <= 0x2f) j++;
      if (j < n && text.charCodeAt(j) >= 0x40 && text.charCodeAt(j) <= 0x7e) {
        if (text[j] === "m" && j === paramsEnd && /^[\d;]*$/.test(params)) {
          style = parseSgr(params, style);
        }
        j++;
      }
      i = j;
    } else if (isC1String(c) || (c === 0x1b && isStringIntroducer(text.charCodeAt(i + 1)))) {
      // OSC, DCS, SOS, PM, APC: a string up to BEL or ST (ESC \ or 0x9C).
      let j = c === 0x1b ? i + 2 : i + 1;
      while (j < n) {
        const d = text.charCodeAt(j);
        if (d === 0x07 || d === 0x9c) {
          j++;
          break;
        }
        if (d === 0x1b) {
          if (text.charCodeAt(j + 1) === 0x5c) j += 2;
          break;
        }
        j++;
      }
      i = j;
    } else if (c === 0x1b) {
      // Any other escape: ESC, intermediates, one final byte (ESC ( B, ESC =, ESC 7...).
      let j = i + 1;
      while (j < n && text.charCodeAt(j) >= 0x20 && text.charCodeAt(j) <= 0x2f) j++;
      if (j < n && text.charCodeAt(j) >= 0x30 && text.charCodeAt(j) <= 0x7e) j++;
      i = j;
    } else {
      i++; // another C0 or C1 control character (or DEL): dropped
    }
  }
  return out.filter((segment) => segment.text !== "");
}

/** The text a line shows, without its colours (what "find in log" matches). */
export function visibleText(line) {
  return segments(line)
    .map((segment) => segment.text)
    .join("");
}

const CUBE = [0, 95, 135, 175, 215, 255];

/** The colour of xterm palette entry 16-255 as CSS (0-15 are CSS classes). */
export function xtermColor(index) {
  if (index >= 232) {
    const v = 8 + (index - 232) * 10;
    return `rgb(${v}, ${v}, ${v})`;
  }
  const n = index - 16;
  return `rgb(${CUBE[Math.floor(n / 36)]}, ${CUBE[Math.floor(n / 6) % 6]}, ${CUBE[n % 6]})`;
}

/** The CSS classes of a style (colours 16-255 are set as inline colours instead). */
export function styleClasses(style) {
  const classes = [];
  if (style.bold) classes.push("ansi-bold");
  if (style.dim) classes.push("ansi-dim");
  if (style.italic) classes.push("ansi-italic");
  if (style.underline) classes.push("ansi-underline");
  if (style.fg !== null && style.fg < 16) classes.push(`ansi-fg-${style.fg}`);
  if (style.bg !== null && style.bg < 16) classes.push(`ansi-bg-${style.bg}`);
  return classes;
}

function appendText(parent, text, mark) {
  if (mark) {
    const lower = text.toLowerCase();
    const needle = mark.toLowerCase();
    // Only where lower-casing keeps the length, so that indexes stay valid.
    if (lower.length === text.length && needle.length === mark.length) {
      let from = 0;
      let at;
      while ((at = lower.indexOf(needle, from)) !== -1) {
        if (at > from) parent.appendChild(document.createTextNode(text.slice(from, at)));
        const m = document.createElement("mark");
        m.className = "logview-mark";
        m.textContent = text.slice(at, at + needle.length);
        parent.appendChild(m);
        from = at + needle.length;
      }
      if (from < text.length) parent.appendChild(document.createTextNode(text.slice(from)));
      return;
    }
  }
  parent.appendChild(document.createTextNode(text));
}

/** A log line as a DocumentFragment of text nodes and styled spans (and <mark>s
 * around `mark`, case-insensitively). No part of the text can become markup. */
export function renderLine(line, { mark = "" } = {}) {
  const fragment = document.createDocumentFragment();
  let room = LINE_CHARS;
  let hidden = 0;
  for (const { text, style } of segments(line)) {
    let t = text;
    if (room <= 0) {
      hidden += t.length;
      continue;
    }
    if (t.length > room) {
      hidden += t.length - room;
      t = t.slice(0, room);
    }
    room -= t.length;
    const classes = styleClasses(style);
    const custom = (style.fg !== null && style.fg >= 16) || (style.bg !== null && style.bg >= 16);
    if (classes.length === 0 && !custom) {
      appendText(fragment, t, mark);
      continue;
    }
    const span = document.createElement("span");
    if (classes.length) span.className = classes.join(" ");
    // CSSOM, not a style attribute: allowed under a strict Content-Security-Policy.
    if (style.fg !== null && style.fg >= 16) span.style.color = xtermColor(style.fg);
    if (style.bg !== null && style.bg >= 16) span.style.backgroundColor = xtermColor(style.bg);
    appendText(span, t, mark);
    fragment.appendChild(span);
  }
  if (hidden > 0) {
    const more = document.createElement("span");
    more.className = "logview-cut";
    more.textContent = ` … ${hidden.toLocaleString()} more characters`;
    fragment.appendChild(more);
  }
  return fragment;
}

// ---------------------------------------------------------------------------
// Fetching

class FetchError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function getJSON(url) {
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  });
  const type = response.headers.get("Content-Type") || "";
  // A signed-out visitor is redirected to the sign-in page (HTML).
  if (!type.includes("application/json")) throw new FetchError(`not JSON from ${url}`, response.status);
  const body = await response.json();
  if (!response.ok) throw new FetchError(body.detail || `HTTP ${response.status}`, response.status);
  return body;
}

function pad(n) {
  return n < 10 ? `0${n}` : String(n);
}

let lastTime = ["", ""];
function clockTime(iso) {
  if (iso === lastTime[0]) return lastTime[1];
  const d = new Date(iso);
  const text = Number.isNaN(d.getTime())
    ? ""
    : `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  lastTime = [iso, text];
  return text;
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

// ---------------------------------------------------------------------------
// One step's log

export class LogView {
  constructor(page, el) {
    this.page = page;
    this.el = el;
    this.section = el.closest("section.step");
    this.details = el.closest("details");
    const data = this.section ? this.section.dataset : el.dataset;
    this.name = data.step || "";
    this.position = data.position || "0";
    this.attempt = Number(data.attempt || 1);
    this.url = el.dataset.linesUrl;
    this.total = Math.max(0, Number(el.dataset.lineCount) || 0);
    this.pages = new Map(); // page index -> {start, lines: [text], times: [iso]}
    this.inflight = new Set(); // page indexes being fetched
    this.failed = new Map(); // page index -> when its fetch failed
    this.generation = 0; // bumped by a reset: answers to older requests are dropped
    this.following = true;
    this.target = 0; // the line named in the URL's fragment
    this.found = 0; // the current match of "find"
    this.find = { query: "", matches: [], more: false, index: -1, total: -1, token: 0 };
    this.live = Promise.resolve(); // live messages are applied one after another
    this.built = false;
    this.rows = [];
    this.rFrom = 1;
    this.rTo = 0;
    el.logview = this;
    // A line named in the URL: open there rather than at the tail.
    const named = /^#s(\d+)-L(\d+)$/.exec(location.hash);
    if (named && named[1] === this.position) this.target = Number(named[2]);
    if (this.details) this.details.addEventListener("toggle", () => this.details.open && this.build());
    if (this.isOpen()) this.build();
  }

  isOpen() {
    return !this.details || this.details.open;
  }

  // --- DOM ---------------------------------------------------------------

  build() {
    if (this.built) {
      this.render();
      return;
    }
    this.built = true;
    const el = this.el;
    // The page's .log element becomes the scroll container; the find box and the
    // follow button go around it, in a wrapper put where it was.
    const wrapper = element("div", "logview");
    const bar = element("div", "logview-bar");
    this.input = element("input", "logview-find");
    this.input.type = "search";
    this.input.placeholder = "Find in log";
    this.input.setAttribute("aria-label", `Find in the log of ${this.name}`);
    this.count = element("span", "logview-count");
    this.count.setAttribute("aria-live", "polite");
    const previous = element("button", "logview-prev", "↑");
    previous.type = "button";
    previous.title = "Previous match (Shift+Enter)";
    const next = element("button", "logview-next", "↓");
    next.type = "button";
    next.title = "Next match (Enter)";
    bar.append(this.input, this.count, previous, next);

    this.scroll = el;
    el.classList.add("logview-scroll");
    this.scroll.tabIndex = 0;
    this.scroll.setAttribute("role", "log");
    this.scroll.setAttribute("aria-label", `Log of ${this.name}`);
    this.sizer = element("div", "logview-sizer");
    this.window = element("div", "logview-window");
    this.empty = element("div", "logview-empty", this.emptyText());
    this.sizer.append(this.window);
    this.follow = element("button", "logview-follow", "Follow ↓");
    this.follow.type = "button";
    this.follow.hidden = true;
    el.before(wrapper);
    wrapper.append(bar, el, this.follow);
    el.replaceChildren(this.sizer, this.empty);

    const lh = parseFloat(getComputedStyle(this.scroll).getPropertyValue("--logview-line-height"));
    this.lh = lh > 0 ? lh : 20;

    this.scroll.addEventListener("scroll", () => this.onScroll(), { passive: true });
    // A scroll event comes at the next frame; lines arriving before it would pull the
    // view back down. So the user's intent to scroll up stops following at once.
    const stop = () => {
      if (this.scroll.scrollTop <= 0) return; // nothing above: nothing to read there
      this.following = false;
      this.follow.hidden = this.total === 0;
    };
    this.scroll.addEventListener("wheel", (event) => event.deltaY < 0 && stop(), { passive: true });
    this.scroll.addEventListener("keydown", (event) => {
      if (["ArrowUp", "PageUp", "Home"].includes(event.key)) stop();
    });
    this.scroll.addEventListener("pointerdown", (event) => {
      if (event.offsetX >= this.scroll.clientWidth) stop(); // on the scrollbar
    });
    this.follow.addEventListener("click", () => this.resumeFollowing());
    this.window.addEventListener("click", (event) => this.onClick(event));
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        this.findNext(event.shiftKey ? -1 : 1);
      } else if (event.key === "Escape") {
        this.input.value = "";
        this.clearFind();
      }
    });
    this.input.addEventListener("input", () => {
      if (!this.input.value) this.clearFind();
    });
    previous.addEventListener("click", () => this.findNext(-1));
    next.addEventListener("click", () => this.findNext(1));
    if (typeof ResizeObserver !== "undefined") {
      new ResizeObserver(() => {
        if (this.following) this.scrollToBottom();
        this.render();
      }).observe(this.scroll);
    }
    this.resize();
    if (this.target) this.scrollToLine(this.target);
    else this.scrollToBottom();
    this.render();
  }

  /** What an empty log says: a skipped step never ran (the reason is above it). */
  emptyText() {
    const status = this.section ? this.section.dataset.status : "";
    if (status === "skipped") return "No output: this step was skipped.";
    // A finished step will print nothing more (an error's reason is shown above it).
    return ["", "queued", "running"].includes(status) ? "No output yet." : "No output.";
  }

  get physicalHeight() {
    return Math.min(this.total * this.lh, MAX_PX);
  }

  resize() {
    if (!this.built) return;
    this.sizer.style.height = `${this.physicalHeight}px`;
    this.scroll.style.setProperty("--logview-digits", String(Math.max(3, String(this.total).length)));
    this.empty.hidden = this.total > 0;
  }

  /** The virtual offset (px from line 1's top) shown at the top of the viewport. */
  virtualTop(scrollTop, clientHeight) {
    const virtual = this.total * this.lh;
    const physical = this.physicalHeight;
    if (virtual <= physical || physical <= clientHeight) return scrollTop;
    return (scrollTop * (virtual - clientHeight)) / (physical - clientHeight);
  }

  scrollTopFor(virtualTop, clientHeight) {
    const virtual = this.total * this.lh;
    const physical = this.physicalHeight;
    const top = Math.max(0, Math.min(virtualTop, virtual - clientHeight));
    if (virtual <= physical || physical <= clientHeight) return top;
    return (top * (physical - clientHeight)) / (virtual - clientHeight);
  }

  atBottom() {
    const s = this.scroll;
    return s.scrollTop + s.clientHeight >= s.scrollHeight - 4;
  }

  scrollToBottom() {
    if (!this.built) return;
    this.scroll.scrollTop = this.scroll.scrollHeight;
  }

  scrollToLine(n) {
    if (!this.built) return;
    const ch = this.scroll.clientHeight;
    this.scroll.scrollTop = this.scrollTopFor((n - 1) * this.lh - (ch - this.lh) / 2, ch);
    this.following = this.atBottom();
    this.render();
  }

  onScroll() {
    this.following = this.atBottom();
    this.render();
  }

  resumeFollowing() {
    this.following = true;
    this.scrollToBottom();
    this.render();
  }

  /** Put the lines near the viewport into the DOM and ask for those not held. */
  render() {
    if (!this.built || !this.isOpen()) return;
    this.follow.hidden = this.following || this.total === 0;
    const ch = this.scroll.clientHeight;
    const st = this.scroll.scrollTop;
    const vt = this.virtualTop(st, ch);
    if (this.total === 0) {
      this.window.replaceChildren();
      this.rows = [];
      this.rFrom = 1;
      this.rTo = 0;
      return;
    }
    const margin = Math.max(20, Math.ceil(ch / this.lh));
    const first = Math.floor(vt / this.lh) + 1;
    const last = Math.ceil((vt + ch) / this.lh);
    const from = Math.max(1, Math.min(this.total, first - margin));
    const to = Math.max(from, Math.min(this.total, last + margin));
    this.placeRows(from, to);
    this.window.style.top = `${st + ((from - 1) * this.lh - vt)}px`;
    for (const row of this.rows) if (!row.filled) this.fill(row);
    this.want(Math.max(1, first - margin), Math.min(this.total, last + margin), first);
  }

  placeRows(from, to) {
    const rows = this.rows;
    if (rows.length === 0 || from > this.rTo || to < this.rFrom) {
      const fragment = document.createDocumentFragment();
      const made = [];
      for (let n = from; n <= to; n++) {
        const row = this.makeRow(n);
        made.push(row);
        fragment.appendChild(row);
      }
      this.window.replaceChildren(fragment);
      this.rows = made;
    } else {
      let start = 0;
      while (this.rFrom + start < from) rows[start++].remove();
      let end = rows.length;
      while (this.rFrom + end - 1 > to) rows[--end].remove();
      const kept = rows.slice(start, end);
      const keptFrom = this.rFrom + start;
      const keptTo = keptFrom + kept.length - 1;
      const before = [];
      for (let n = from; n < keptFrom; n++) before.push(this.makeRow(n));
      const after = [];
      for (let n = keptTo + 1; n <= to; n++) after.push(this.makeRow(n));
      if (before.length) this.window.prepend(...before);
      if (after.length) this.window.append(...after);
      this.rows = before.concat(kept, after);
    }
    this.rFrom = from;
    this.rTo = to;
  }

  makeRow(n) {
    const row = element("div", "logview-row");
    row.n = n;
    const id = `s${this.position}-L${n}`;
    const number = element("a", "logview-ln", String(n));
    number.id = id;
    number.href = `#${id}`;
    const time = element("time", "logview-ts");
    const text = element("span", "logview-text text");
    row.append(number, time, text);
    row.filled = false;
    this.fill(row);
    this.mark(row);
    return row;
  }

  fill(row) {
    const line = this.line(row.n);
    const [, time, text] = row.children;
    // "line": a line with its text; a pending row waits for its page.
    if (line === null) {
      row.classList.add("logview-pending");
      row.classList.remove("line");
      return;
    }
    row.classList.remove("logview-pending");
    row.classList.add("line");
    const mark = this.find.matches.length ? this.find.query : "";
    text.replaceChildren(renderLine(line.text, { mark }));
    time.textContent = clockTime(line.time);
    time.dateTime = line.time;
    row.filled = true;
  }

  mark(row) {
    row.classList.toggle("logview-target", row.n === this.target);
    row.classList.toggle("logview-found", row.n === this.found);
  }

  refreshRows({ text = false } = {}) {
    for (const row of this.rows) {
      if (text) row.filled = false;
      if (!row.filled) this.fill(row);
      this.mark(row);
    }
  }

  onClick(event) {
    const link = event.target.closest(".logview-ln");
    if (!link || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return; // new tab...
    event.preventDefault();
    history.pushState(null, "", link.getAttribute("href"));
    this.page.setTarget(this, Number(link.textContent), { scroll: false });
  }

  // --- The line cache ------------------------------------------------------

  line(n) {
    const page = this.pages.get(Math.floor((n - 1) / PAGE));
    if (!page) return null;
    const i = n - page.start;
    return i >= 0 && i < page.lines.length ? { text: page.lines[i], time: page.times[i] } : null;
  }

  /** Hold line n if it continues what its page holds; false if it does not fit. */
  store(n, text, time) {
    const index = Math.floor((n - 1) / PAGE);
    let page = this.pages.get(index);
    if (!page) {
      if (n !== index * PAGE + 1) return false;
      page = { start: n, lines: [], times: [] };
      this.pages.set(index, page);
    }
    const i = n - page.start;
    if (i < page.lines.length) return true;
    if (i > page.lines.length) return false;
    page.lines.push(String(text));
    page.times.push(time);
    return true;
  }

  pageComplete(index) {
    const page = this.pages.get(index);
    const end = Math.min((index + 1) * PAGE, this.total);
    return page ? page.start + page.lines.length - 1 >= end : end < index * PAGE + 1;
  }

  /** Keep at most MAX_PAGES pages: drop those farthest from what is (or, when
   * following, will be) on screen, never one that is on screen. */
  evict() {
    if (this.pages.size <= MAX_PAGES) return;
    const centre = Math.floor(((this.following || !this.built ? this.total : this.rFrom) - 1) / PAGE);
    const keepFrom = Math.floor((this.rFrom - 1) / PAGE);
    const keepTo = Math.floor((this.rTo - 1) / PAGE);
    const far = [...this.pages.keys()]
      .filter((i) => i < keepFrom || i > keepTo)
      .sort((a, b) => Math.abs(b - centre) - Math.abs(a - centre));
    while (this.pages.size > MAX_PAGES && far.length) this.pages.delete(far.shift());
  }

  setTotal(total) {
    if (total === this.total) return;
    this.total = total;
    this.el.dataset.lineCount = String(total);
    this.resize();
    if (this.following) this.scrollToBottom();
    this.render();
  }

  /** Fetch the pages of lines first..last not held, the one holding `focus` and the
   * tail first, CONCURRENT_FETCHES at a time. */
  want(first, last, focus) {
    const focusPage = Math.floor((focus - 1) / PAGE);
    const pages = [];
    for (let i = Math.floor((first - 1) / PAGE); i <= Math.floor((last - 1) / PAGE); i++) {
      if (this.pageComplete(i) || this.inflight.has(i)) continue;
      const failed = this.failed.get(i);
      if (failed && Date.now() - failed < RETRY_FAILED_MS) continue;
      pages.push(i);
    }
    pages.sort((a, b) => Math.abs(a - focusPage) - Math.abs(b - focusPage) || b - a);
    for (const index of pages) {
      if (this.inflight.size >= CONCURRENT_FETCHES) break;
      this.fetchPage(index);
    }
  }

  linesUrl(params) {
    const url = new URL(this.url, location.href);
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, String(value));
    return url.href;
  }

  async fetchPage(index) {
    const held = () => (this.pages.get(index) ? this.pages.get(index).lines.length : 0);
    const before = held();
    const after = index * PAGE + before;
    const generation = this.generation;
    this.inflight.add(index);
    try {
      const limit = (index + 1) * PAGE - after;
      const body = await getJSON(this.linesUrl({ after, limit, attempt: this.attempt }));
      if (generation !== this.generation) return;
      this.absorb(body);
      // No progress (the database holds fewer lines than this page believed): wait
      // before asking again rather than asking in a loop.
      if (held() > before || this.pageComplete(index)) this.failed.delete(index);
      else this.retryLater(index);
    } catch (error) {
      if (generation !== this.generation) return;
      this.retryLater(index);
      console.warn(`goci: lines of ${this.name} not loaded:`, error);
    } finally {
      if (generation === this.generation) this.inflight.delete(index);
    }
    this.render();
  }

  retryLater(index) {
    this.failed.set(index, Date.now());
    setTimeout(() => this.render(), RETRY_FAILED_MS + 50);
  }

  /** Take the lines of a JSON answer; `trustTotal`: also learn how many there are. */
  absorb(body, { trustTotal = true } = {}) {
    if (body.attempt !== this.attempt) return;
    let last = 0;
    for (const [n, text, time] of body.lines) {
      this.store(n, text, time);
      last = n;
    }
    this.evict();
    const total = Math.max(this.total, last, trustTotal ? body.total : 0);
    if (total !== this.total) this.setTotal(total);
    else this.refreshRows();
  }

  reset(attempt) {
    this.generation++;
    this.attempt = attempt;
    if (this.section) this.section.dataset.attempt = String(attempt);
    this.pages.clear();
    this.inflight.clear();
    this.failed.clear();
    this.clearFind();
    this.target = 0;
    this.following = true;
    if (this.built) this.window.replaceChildren();
    this.rows = [];
    this.rFrom = 1;
    this.rTo = 0;
    this.setTotal(0);
    this.render();
  }

  // --- Live lines ----------------------------------------------------------

  /** Apply a {"type": "lines"} message after those before it. */
  receive(message) {
    this.live = this.live.then(() => this.applyLines(message)).catch((error) => console.warn("goci:", error));
    return this.live;
  }

  async applyLines(message) {
    const attempt = Number(message.attempt) || this.attempt;
    if (attempt < this.attempt) return; // a late message of an attempt given up
    if (attempt > this.attempt) this.reset(attempt); // a retried job numbers from 1 again
    const now = new Date().toISOString();
    let first = Number(message.first);
    let lines = Array.isArray(message.lines) ? message.lines : [];
    if (!Number.isInteger(first) || first < 1) return;
    if (first > this.total + 1) await this.fillGap(first - 1);
    if (first <= this.total) {
      // Shown already (a resume overlapping what the page held): nothing twice.
      lines = lines.slice(this.total - first + 1);
      first = this.total + 1;
    }
    if (lines.length === 0) return;
    lines.forEach((text, i) => this.store(first + i, text, now));
    this.evict();
    this.setTotal(first + lines.length - 1);
    this.refreshRows();
  }

  /** Lines total+1..upTo were not received live (a dropped message): fetch them. */
  async fillGap(upTo) {
    const missing = upTo - this.total;
    if (missing <= GAP_FETCH_MAX) {
      const generation = this.generation;
      try {
        const url = this.linesUrl({ after: this.total, limit: missing, attempt: this.attempt });
        const body = await getJSON(url);
        if (generation !== this.generation) return;
        // Not the answer's total: the lines after upTo are in the message in hand.
        this.absorb(body, { trustTotal: false });
      } catch (error) {
        console.warn(`goci: missing lines of ${this.name} not loaded:`, error);
      }
    }
    // Longer gaps, or a failed fetch: the lines are counted now and fetched by page
    // when they are scrolled to.
    if (this.total < upTo) this.setTotal(upTo);
  }

  /** Catch up from the database (polling, or once the build has finished). */
  poll() {
    this.live = this.live
      .then(async () => {
        const body = await getJSON(this.linesUrl({ after: this.total, limit: GAP_FETCH_MAX }));
        if (body.attempt > this.attempt) {
          this.reset(body.attempt);
          if (body.total > 0) this.setTotal(body.total);
        } else if (body.attempt === this.attempt) {
          this.absorb(body);
        }
        return body;
      })
      .catch((error) => {
        console.warn(`goci: polling ${this.name}:`, error);
        return null;
      });
    return this.live;
  }

  // --- Find ----------------------------------------------------------------

  clearFind() {
    this.find = { query: "", matches: [], more: false, index: -1, total: -1, token: this.find.token + 1 };
    this.found = 0;
    if (this.count) this.count.textContent = "";
    this.refreshRows({ text: true });
  }

  async findNext(direction) {
    const query = this.input.value;
    if (!query) return this.clearFind();
    let find = this.find;
    if (find.query !== query || find.total !== this.total) {
      const token = find.token + 1;
      this.find = { ...find, token };
      this.count.textContent = "…";
      let body;
      try {
        body = await getJSON(this.linesUrl({ q: query, attempt: this.attempt }));
      } catch (error) {
        this.count.textContent = "search failed";
        return;
      }
      if (this.find.token !== token) return;
      // Go on from the match shown before (new lines arrived), else from the top of
      // the viewport, wrapping around like a browser's find.
      const previous = find.query === query ? find.matches[find.index] || 0 : 0;
      const top = Math.floor(this.virtualTop(this.scroll.scrollTop, this.scroll.clientHeight) / this.lh) + 1;
      const matches = body.matches;
      let at;
      if (direction > 0) at = matches.findIndex((n) => (previous ? n > previous : n >= top));
      else at = findLastIndex(matches, (n) => n < (previous || top));
      if (at === -1) at = direction > 0 ? 0 : matches.length - 1;
      find = { query, matches, more: body.more, index: matches.length ? at : -1, total: this.total, token };
      this.find = find;
      this.refreshRows({ text: true });
    } else if (find.matches.length) {
      find.index = (find.index + direction + find.matches.length) % find.matches.length;
    }
    if (find.index < 0) {
      this.found = 0;
      this.count.textContent = "no matches";
      this.refreshRows();
      return;
    }
    this.found = find.matches[find.index];
    this.count.textContent = `${find.index + 1} of ${find.matches.length}${find.more ? "+" : ""}`;
    this.scrollToLine(this.found);
    this.refreshRows();
  }
}

function findLastIndex(array, test) {
  for (let i = array.length - 1; i >= 0; i--) if (test(array[i])) return i;
  return -1;
}

// ---------------------------------------------------------------------------
// The page: its logs, its status line, the WebSocket

/** How long something took, as builds/views.py format_duration writes it. */
export function formatDuration(seconds) {
  const whole = Math.floor(seconds);
  if (!(whole >= 1)) return "<1s";
  const hours = Math.floor(whole / 3600);
  const minutes = Math.floor((whole % 3600) / 60);
  const secs = whole % 60;
  if (hours) return `${hours}h ${pad(minutes)}m`;
  if (minutes) return `${minutes}m ${pad(secs)}s`;
  return `${secs}s`;
}

function setTimes(el, started, finished) {
  if (started) el.dataset.startedAt = started;
  else delete el.dataset.startedAt;
  if (finished) el.dataset.finishedAt = finished;
  else delete el.dataset.finishedAt;
}

/** A `build:` step's image ID and pushed tags (a "step" message's image_id, digests). */
function showBuilt(el, imageId, digests) {
  el.hidden = !imageId;
  if (!imageId) return;
  const doc = el.ownerDocument;
  const rows = [["Image", imageId, ""]];
  for (const [tag, digest] of Object.entries(digests)) rows.push(["Pushed", tag, digest]);
  el.replaceChildren();
  for (const [term, first, second] of rows) {
    const dt = doc.createElement("dt");
    dt.textContent = term;
    const dd = doc.createElement("dd");
    const code = doc.createElement("code");
    code.textContent = first;
    dd.append(code);
    if (second) {
      const digest = doc.createElement("code");
      digest.className = "muted";
      digest.textContent = second;
      dd.append(" ", digest);
    }
    el.append(dt, dd);
  }
}

function setStatusOf(el, status) {
  for (const name of [...el.classList]) if (name.startsWith("status-")) el.classList.remove(name);
  el.classList.add(`status-${status}`);
  // Badges are text; an element with children (an SVG group) keeps them.
  if (el.children.length === 0) el.textContent = status;
}

export class LogPage {
  constructor(build) {
    this.build = build;
    this.doc = build.ownerDocument;
    this.views = new Map(); // step name -> LogView
    this.socket = null;
    this.retries = 0;
    this.reconnectTimer = null;
    this.pollTimer = null;
    this.stopped = false;
    this.state = "";
    // Durations count from the server's timestamps: correct for this machine's clock.
    this.skew = -Infinity;
    const clock = build.querySelector("[data-now]");
    this.learnClock(clock ? clock.dataset.now : "");
    if (this.skew === -Infinity) this.skew = 0;
    this.makeStatusLine();
    this.scan(build);
    this.attempt = Math.max(1, ...[...this.views.values()].map((v) => v.attempt));
  }

  get finished() {
    return FINISHED.has(this.build.dataset.status);
  }

  makeStatusLine() {
    const line = element("div", "logview-status");
    line.setAttribute("role", "status");
    this.stateText = element("span", "logview-state");
    const label = element("label", "logview-times-toggle");
    this.timesBox = element("input");
    this.timesBox.type = "checkbox";
    label.append(this.timesBox, " Timestamps");
    line.append(this.stateText, label);
    this.build.prepend(line);
    this.statusLine = line;
    let on = false;
    try {
      on = localStorage.getItem(TIMESTAMPS_KEY) === "1";
    } catch {
      // Storage may be disabled; the toggle then lasts for this page only.
    }
    this.showTimes(on);
    this.timesBox.addEventListener("change", () => {
      this.showTimes(this.timesBox.checked);
      try {
        localStorage.setItem(TIMESTAMPS_KEY, this.timesBox.checked ? "1" : "0");
      } catch {
        // as above
      }
    });
  }

  showTimes(on) {
    this.timesBox.checked = on;
    this.build.classList.toggle("logview-times", on);
  }

  setState(state) {
    this.state = state;
    this.statusLine.dataset.state = state;
    this.stateText.textContent = STATE_TEXT[state] || state;
  }

  /** Bind the logs in `root` not bound yet (the page, or content htmx swapped in). */
  scan(root) {
    const logs = [...root.querySelectorAll(".log[data-lines-url]")];
    if (root.matches && root.matches(".log[data-lines-url]")) logs.push(root);
    for (const el of logs) {
      if (el.logview) continue;
      // A step's log swapped in anew replaces the old one (its data-line-count is newer).
      const view = new LogView(this, el);
      this.views.set(view.name, view);
    }
  }

  start() {
    // Content that htmx swaps in (a step added to the page) gets its viewer too.
    this.doc.addEventListener("htmx:load", (event) => {
      if (event.target instanceof Element) this.scan(event.target);
    });
    // A header swapped in after Cancel may know that the build ended before the socket
    // does: a build canceled while queued ran on no worker, which would have said so.
    this.doc.addEventListener("htmx:afterSwap", () => {
      const badge = this.doc.querySelector("#build-header [data-build-status]");
      if (badge && FINISHED.has(badge.dataset.buildStatus)) this.setBuildStatus(badge.dataset.buildStatus);
    });
    window.addEventListener("hashchange", () => this.applyHash());
    setInterval(() => this.tick(), 1000);
    // A failed build opens at its failure (the server rendered the steps open or
    // closed); a line named in the URL wins.
    if (FAILED.has(this.build.dataset.status) && !location.hash) this.showFailure();
    this.applyHash();
    // The browser scrolls to a fragment's element by itself until the page has loaded,
    // aligning it to the top; the line is centred again after that.
    if (this.doc.readyState !== "complete") {
      window.addEventListener("load", () => setTimeout(() => this.applyHash(), 0), { once: true });
    }
    if (this.finished) {
      this.setState("finished");
      return;
    }
    this.setState("connecting");
    this.connect();
  }

  // --- Targets (#s3-L120) ----------------------------------------------------

  applyHash() {
    const match = /^#s(\d+)-L(\d+)$/.exec(location.hash);
    if (!match) return;
    const view = [...this.views.values()].find((v) => v.position === match[1]);
    if (view) this.setTarget(view, Number(match[2]), { scroll: true });
  }

  setTarget(view, n, { scroll }) {
    for (const other of this.views.values()) {
      if (other !== view && other.target) {
        other.target = 0;
        other.refreshRows();
      }
    }
    view.target = n;
    if (scroll) {
      if (view.details && !view.details.open) view.details.open = true; // builds it
      view.build();
      view.scrollToLine(n);
      const row = view.rows.find((r) => r.n === n);
      (row || view.el).scrollIntoView({ block: "center" });
    }
    view.refreshRows();
  }

  // --- Statuses --------------------------------------------------------------

  /** A step's status, and from a "step" message (`detail`) its times, exit code
   * and the reason it was skipped or could not run. */
  setStepStatus(name, status, detail = {}) {
    if (!name || !status) return;
    const quoted = CSS.escape(name);
    const all = (attribute) => this.doc.querySelectorAll(`[${attribute}="${quoted}"]`);
    for (const el of all("data-step-status")) setStatusOf(el, status);
    const view = this.views.get(name);
    const section = view ? view.section : this.doc.querySelector(`section.step[data-step="${quoted}"]`);
    if (section) section.dataset.status = status;
    const exitCode = detail.exit_code;
    if (exitCode !== undefined && exitCode !== null && section) section.dataset.exitCode = String(exitCode);
    if (exitCode !== undefined) {
      for (const el of all("data-step-exit")) {
        el.hidden = !exitCode;
        el.textContent = exitCode ? `exit ${exitCode}` : "";
      }
    }
    if (detail.started_at !== undefined) {
      this.learnClock(detail.finished_at || detail.started_at);
      for (const el of all("data-step-duration")) {
        setTimes(el, detail.started_at, detail.finished_at);
        el.textContent = this.elapsedText(el, detail.duration);
      }
    }
    if (detail.error !== undefined) {
      for (const el of all("data-step-error")) {
        el.hidden = !detail.error;
        el.classList.toggle("step-skip", status === "skipped");
        el.textContent = detail.error ? `${status === "skipped" ? "Skipped: " : ""}${detail.error}` : "";
      }
    }
    if (detail.image_id !== undefined) {
      for (const el of all("data-step-built")) showBuilt(el, detail.image_id, detail.digests || {});
    }
    if (view && view.empty) view.empty.textContent = view.emptyText();
  }

  // --- Durations: the server's numbers, counted on each second while running ----


  /** The text of a duration element: `seconds` when known, else counted from its
   * data-started-at by this page's clock corrected by the server's (data-now). */
  elapsedText(el, seconds) {
    const started = el.dataset.startedAt;
    if (!started) return "";
    if (seconds === null || seconds === undefined) {
      const end = el.dataset.finishedAt ? Date.parse(el.dataset.finishedAt) : Date.now() + this.skew;
      seconds = (end - Date.parse(started)) / 1000;
    }
    return formatDuration(seconds);
  }

  /** The server's clock was at least at `iso` by now: a later page load or a message
   * that took its time would otherwise make running durations lag. */
  learnClock(iso) {
    const at = Date.parse(iso || "");
    if (!Number.isNaN(at)) this.skew = Math.max(this.skew, at - Date.now());
  }

  tick() {
    const running = this.doc.querySelectorAll(".duration[data-started-at]:not([data-finished-at])");
    for (const el of running) el.textContent = this.elapsedText(el);
  }

  // --- A failed build: what went wrong first --------------------------------

  /** Open the failed steps, close those that passed or never ran, and bring the
   * first failure into view (its log opens at its end). */
  showFailure() {
    let first = null;
    for (const section of this.doc.querySelectorAll("section.step")) {
      const details = section.querySelector("details");
      if (!details) continue;
      const failed = FAILED.has(section.dataset.status);
      if (failed) first = first || section;
      if (section.dataset.status === "success" || section.dataset.status === "skipped") details.open = false;
      else if (failed) details.open = true;
    }
    if (first) first.scrollIntoView({ block: "start" });
  }

  setBuildStatus(status) {
    if (!status) return;
    const changed = this.build.dataset.status !== status;
    if (changed && FAILED.has(status)) this.showFailure();
    this.build.dataset.status = status;
    for (const el of this.doc.querySelectorAll("[data-build-status]")) {
      el.dataset.buildStatus = status;
      setStatusOf(el, status);
    }
    // The page header (duration, Cancel/Rerun) re-fetches itself on this event (htmx).
    if (changed) this.doc.body.dispatchEvent(new CustomEvent("goci:build-status", { detail: { status } }));
    if (this.finished) this.finish();
  }

  /** The build is over: take what the socket may have dropped, and stop. */
  finish() {
    if (this.stopped) return;
    this.stopped = true;
    this.stopPolling();
    clearTimeout(this.reconnectTimer);
    this.setState("finished");
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close(1000);
    for (const view of this.views.values()) view.poll();
  }

  // --- The WebSocket ---------------------------------------------------------

  socketUrl() {
    const url = new URL(this.build.dataset.wsUrl, location.href);
    if (url.protocol === "http:") url.protocol = "ws:";
    else if (url.protocol === "https:") url.protocol = "wss:";
    return url.href;
  }

  held() {
    const steps = {};
    for (const [name, view] of this.views) steps[name] = view.total;
    return steps;
  }

  connect() {
    this.reconnectTimer = null;
    if (this.stopped) return;
    let socket;
    try {
      socket = new WebSocket(this.socketUrl());
    } catch (error) {
      console.warn("goci: live updates:", error);
      this.reconnect();
      return;
    }
    this.socket = socket;
    let received = 0;
    let ackTimer = null;
    socket.onopen = () => {
      if (socket !== this.socket) return;
      socket.send(JSON.stringify({ type: "resume", attempt: this.attempt, steps: this.held() }));
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      this.onMessage(event.data);
      // Flow control (builds/consumers.py): the server sends more of the catch-up as
      // it is acknowledged, and drops a socket that lets too much go unacknowledged.
      // One ack for the messages that arrive together.
      received++;
      if (!ackTimer) {
        ackTimer = setTimeout(() => {
          ackTimer = null;
          if (socket === this.socket && socket.readyState === 1) {
            socket.send(JSON.stringify({ type: "ack", received }));
          }
        }, 0);
      }
    };
    socket.onclose = (event) => {
      if (socket === this.socket) this.onClose(event.code);
    };
  }

  onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    switch (message && message.type) {
      case "lines": {
        const attempt = Number(message.attempt) || 0;
        if (attempt > this.attempt) this.attempt = attempt;
        const view = this.views.get(message.step);
        if (view) view.receive(message);
        break;
      }
      case "step":
        this.setStepStatus(message.step, message.status, message);
        break;
      case "build":
        this.setBuildStatus(message.status);
        break;
      case "caught_up":
        this.retries = 0;
        this.stopPolling();
        if (!this.stopped) this.setState("live");
        break;
      case "paused":
        this.setState("paused");
        this.startPolling();
        break;
      default:
        break; // a newer server's message: ignored
    }
  }

  onClose(code) {
    this.socket = null;
    if (this.stopped) return;
    if (code === 4404 || code === 4403) {
      this.stopped = true;
      this.stopPolling();
      this.setState("unavailable");
      return;
    }
    // 4429: this page read too slowly (a background tab, a slow link); like a network
    // failure, it reconnects and resumes from the last line it holds.
    if (code === 4503) {
      this.setState("paused");
      this.startPolling();
    } else if (this.state !== "paused") {
      this.setState("reconnecting");
    }
    this.reconnect();
  }

  reconnect() {
    if (this.stopped || this.reconnectTimer) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.retries);
    const delay = Math.min(BACKOFF_MAX_MS, base * (0.8 + 0.4 * Math.random()));
    this.retries++;
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  /** Drop the connection as a network failure would (for tests). */
  forceDisconnect() {
    const socket = this.socket;
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = null;
    socket.close();
    this.onClose(1006);
  }

  startPolling() {
    if (this.pollTimer || this.stopped) return;
    this.pollTimer = setInterval(() => this.pollOnce(), POLL_MS);
  }

  stopPolling() {
    clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  async pollOnce() {
    const views = [...this.views.values()];
    let polled = views.filter((v) => !FINISHED.has(v.section ? v.section.dataset.status : ""));
    if (polled.length === 0) polled = views.slice(0, 1); // to learn the build's status
    const answers = await Promise.all(polled.map((view) => view.poll()));
    for (const body of answers) {
      if (!body) continue;
      if (body.attempt > this.attempt) this.attempt = body.attempt;
      this.setStepStatus(body.step, body.status);
    }
    const build = answers.find((body) => body && body.build_status);
    if (build) this.setBuildStatus(build.build_status);
  }

  hook() {
    const page = this;
    const view = (name) => page.views.get(name);
    return {
      get socket() {
        return page.socket;
      },
      get state() {
        return page.state;
      },
      /** The number of the last line held for a step (sent when resuming). */
      lastLine: (name) => (view(name) ? view(name).total : 0),
      /** The lines the step's log shows (each number once, whether held or fetched on demand). */
      lineCount: (name) => (view(name) ? view(name).total : 0),
      /** How many of them are in memory now. */
      loadedLines: (name) =>
        view(name) ? [...view(name).pages.values()].reduce((sum, p) => sum + p.lines.length, 0) : 0,
      /** The text of line n if it is in memory, else null. */
      text: (name, n) => (view(name) && view(name).line(n) ? view(name).line(n).text : null),
      forceDisconnect: () => page.forceDisconnect(),
    };
  }
}

/** Start the viewer on the page's #build, if any. */
export function init(doc = document) {
  const build = doc.getElementById("build");
  if (!build || build.logpage) return build ? build.logpage : null;
  const page = new LogPage(build);
  build.logpage = page;
  window.gociLog = page.hook();
  page.start();
  return page;
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => init());
  else init();
}
