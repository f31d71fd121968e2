/* Skin-lesion classifier page. Plain JavaScript, no build step, no third-party code; it talks only to this
 * server's API. No inline script or style anywhere: styles are set through classes or the CSSOM, which a
 * strict Content-Security-Policy (default-src 'self') allows. */
"use strict";

(function () {
  const THEME_KEY = "skin-ui-theme";
  const DISCLAIMER = "Research tool — not a medical device; not a diagnosis. See a dermatologist.";
  const TOP_K = 5;
  const MB = 1024 * 1024;
  // Used until /api/info answers; the server enforces its own limits either way.
  const DEFAULT_LIMITS = {
    max_image_bytes: 10 * MB,
    max_body_bytes: 40 * MB,
    max_batch_files: 16,
    allowed_formats: ["JPEG", "PNG", "WEBP"],
    allowed_types: ["image/jpeg", "image/png", "image/webp"],
  };
  const EXTENSION_TYPES = { jpg: "image/jpeg", jpeg: "image/jpeg", png: "image/png", webp: "image/webp" };
  const FORMAT_NAMES = { JPEG: "JPEG", PNG: "PNG", WEBP: "WebP" };
  const FORMAT_EXTENSIONS = { JPEG: [".jpg", ".jpeg"], PNG: [".png"], WEBP: [".webp"] };

  // ---- theme, applied before the first paint (this script is not deferred) ----

  const root = document.documentElement;
  const darkQuery = window.matchMedia("(prefers-color-scheme: dark)");

  function storedTheme() {
    try {
      const value = window.localStorage.getItem(THEME_KEY);
      return value === "dark" || value === "light" ? value : null;
    } catch (err) {
      return null; // storage disabled: follow the system
    }
  }

  function currentTheme() {
    return root.dataset.theme || (darkQuery.matches ? "dark" : "light");
  }

  const remembered = storedTheme();
  if (remembered) root.dataset.theme = remembered;

  // ---- state ----

  const state = {
    info: null,
    infoReady: null, // promise of /api/info
    names: new Map(), // class label -> display name
    items: [], // {file, url, result, error, analysedAt}
    selected: 0,
    busy: false,
    requestError: null, // why the last Analyse failed as a whole, until the next one or new images
    cancel: null, // the running analysis's AbortController
    showAll: false,
    reportRequested: false,
    sort: { key: null, descending: false },
    reportRows: [],
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  document.addEventListener("DOMContentLoaded", init);

  function init() {
    setupTheme();
    setupTabs();
    setupInput();
    setupHeatmapControls();
    setupResults();
    drawLegend();
    state.infoReady = loadInfo();
    renderAll();
    if (window.location.hash === "#model") selectTab($("tab-model"));
    // A #model link followed, or Back and Forward, while the page is open: the tab follows the address.
    // Other fragments ("#main", the skip link's) leave the tab as it is.
    window.addEventListener("hashchange", () => {
      const hash = window.location.hash;
      if (hash === "#model" || hash === "#analyse" || hash === "") selectTab($(hash === "#model" ? "tab-model" : "tab-analyse"));
    });
  }

  // ---- formatting ----

  function pct(p, digits) {
    if (typeof p !== "number" || !isFinite(p)) return "–";
    const d = digits === undefined ? 1 : digits;
    const floor = Math.pow(10, -d) / 100;
    if (p > 0 && p < floor) return "< " + (floor * 100).toFixed(d) + "\u00a0%";
    return (p * 100).toFixed(d) + "\u00a0%";
  }

  // The threshold with as many digits as it takes not to read as the top class's own figure beside it
  // ("under 25.1 %" of a top class shown as 25.1 %: 0.251063 against 0.250983).
  function pctApart(threshold, p) {
    let digits = 1;
    while (digits < 4 && isNumber(p) && pct(threshold, digits) === pct(p, digits)) digits += 1;
    return pct(threshold, digits);
  }

  function fixed(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "–";
  }

  function formatBytes(n) {
    if (n >= MB) return (n / MB).toFixed(n % MB === 0 ? 0 : 1) + "\u00a0MB";
    if (n >= 1024) return Math.round(n / 1024) + "\u00a0KB";
    return n + "\u00a0bytes";
  }

  // "1 image", not "1 images": a server can take one image at a time (SKIN_MAX_BATCH_FILES=1).
  function images(n) {
    return n + (n === 1 ? " image" : " images");
  }

  function formatList(words) {
    if (words.length <= 1) return words.join("");
    return words.slice(0, -1).join(", ") + " or " + words[words.length - 1];
  }

  function sentence(text) {
    const s = String(text || "").trim();
    if (!s) return "";
    const first = s.charAt(0).toUpperCase() + s.slice(1);
    return /[.!?]$/.test(first) ? first : first + ".";
  }

  function formatDate(value) {
    const date = new Date(value);
    if (!value || isNaN(date.getTime())) return value || "–";
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function displayName(label) {
    return state.names.get(label) || String(label).replace(/_/g, " ");
  }

  // ---- API ----

  class ApiError extends Error {
    constructor(message, code, status) {
      super(message);
      this.code = code;
      this.status = status;
    }
  }

  // A request the server never answers must not leave the page busy for ever.
  const REQUEST_TIMEOUT_MS = 120000;

  // AbortSignal.timeout came with Safari 16 and Chrome 103: without it every request threw, and the page said
  // the server could not be reached (iOS 15, where older iPhones and iPads stay). A timer of its own there.
  function timeoutSignal(ms) {
    if (typeof AbortSignal.timeout === "function") return AbortSignal.timeout(ms);
    const controller = new AbortController();
    window.setTimeout(() => controller.abort(), ms);
    return controller.signal;
  }

  // One signal for a request: it ends when the time is up, or when the person cancels (`cancel`, optional).
  function requestSignal(cancel) {
    const timeout = timeoutSignal(REQUEST_TIMEOUT_MS);
    if (!cancel) return timeout;
    const controller = new AbortController();
    const stop = () => controller.abort();
    timeout.addEventListener("abort", stop);
    cancel.addEventListener("abort", stop);
    return controller.signal;
  }

  const CANCELLED = new ApiError("The analysis was cancelled.", "cancelled", 0);

  async function request(path, options) {
    const { cancel, ...rest } = options || {};
    let response;
    try {
      const base = { headers: { Accept: "application/json" }, signal: requestSignal(cancel) };
      response = await fetch(path, Object.assign(base, rest));
    } catch (err) {
      if (cancel && cancel.aborted) throw CANCELLED;
      // The timer's abort is an AbortError where the browser has no AbortSignal.timeout; nothing else aborts.
      if (err && (err.name === "TimeoutError" || err.name === "AbortError")) {
        throw new ApiError("The server did not answer within " + REQUEST_TIMEOUT_MS / 60000 + " minutes; try again.", "timeout", 0);
      }
      throw new ApiError("The server could not be reached; check the connection.", "network", 0);
    }
    let body = null;
    if ((response.headers.get("content-type") || "").includes("application/json")) {
      try {
        body = await response.json();
      } catch (err) {
        body = null;
      }
    }
    if (cancel && cancel.aborted) throw CANCELLED; // while the answer was being read
    if (!response.ok) {
      const error = body && body.error;
      if (error && error.message) throw new ApiError(sentence(error.message), error.code, response.status);
      throw new ApiError(statusWords(response), "http_" + response.status, response.status);
    }
    if (body === null) {
      // A web page where data was due: an expired sign-in in front of the service, or a captive portal.
      const page = (response.headers.get("content-type") || "").includes("text/html");
      const words = page
        ? "The server answered with a web page, not data (a sign-in page?); reload the page, then try again."
        : "The server's answer is cut off or not JSON; try again.";
      throw new ApiError(words, "bad_response", response.status);
    }
    return body;
  }

  // This server says what went wrong in JSON; an answer without it came from a proxy in front of it (nginx's
  // 1 MB default body limit, a gateway timeout) and has only its status. HTTP/2 has no status text.
  function statusWords(response) {
    const status = response.status;
    const code = " (HTTP " + status + ")";
    const later = "try again " + retryWords(response.headers.get("retry-after")) + ".";
    if (status === 413) return "The upload is too large for the server or a proxy in front of it" + code + "; try fewer or smaller images.";
    if (status === 429) return "The server has had too many requests" + code + "; " + later;
    if (status === 502 || status === 503) return "The server is unavailable or busy" + code + "; " + later;
    if (status === 504) return "The server took too long to answer" + code + "; try again in a moment.";
    return sentence(("The server answered " + status + " " + response.statusText).trim());
  }

  // Retry-After is seconds or an HTTP date.
  function retryWords(value) {
    const given = /^\s*\d+\s*$/.test(value || "") ? Number(value) : (Date.parse(value || "") - Date.now()) / 1000;
    if (!(given > 1)) return "in a moment";
    const seconds = Math.ceil(given);
    if (seconds < 120) return "in " + seconds + " seconds";
    return "in " + Math.ceil(seconds / 60) + " minutes";
  }

  // A proxy, a cache or a server of another version can answer 200 with JSON of another shape: the page
  // draws only an answer it can read in full, never half of one over the previous result.
  const MAX_HEATMAP_CELLS = 256 * 256;

  function isProbability(p) {
    return typeof p === "number" && p >= 0 && p <= 1;
  }

  function isClassScore(score) {
    return Boolean(score) && typeof score.label === "string" && isProbability(score.probability);
  }

  function isHeatmap(map) {
    const { width, height, values } = map;
    return typeof map.label === "string" && Number.isInteger(width) && Number.isInteger(height) &&
      width > 0 && height > 0 && width * height <= MAX_HEATMAP_CELLS &&
      Array.isArray(values) && values.length === height &&
      values.every((row) => Array.isArray(row) && row.length === width && row.every((v) => typeof v === "number" && isFinite(v))) &&
      (map.extent === undefined || isExtent(map.extent));
  }

  // Where the map's cells lie on what the model saw (fractions; it may reach past the edges).
  function isExtent(extent) {
    return Boolean(extent) && ["left", "top", "width", "height"].every((k) => typeof extent[k] === "number" && isFinite(extent[k])) &&
      extent.width > 0 && extent.height > 0;
  }

  function isResult(result) {
    if (!result || typeof result !== "object") return false;
    const predictions = result.predictions;
    return isClassScore(result.primary) && Array.isArray(result.top) && result.top.length > 0 &&
      result.top.every(isClassScore) && Boolean(predictions) && typeof predictions === "object" &&
      !Array.isArray(predictions) && Object.values(predictions).every(isProbability) &&
      (result.heatmap === undefined || result.heatmap === null || isHeatmap(result.heatmap));
  }

  function isLimits(lim) {
    return Boolean(lim) && ["max_image_bytes", "max_body_bytes", "max_batch_files"].every((k) => typeof lim[k] === "number" && lim[k] > 0) &&
      ["allowed_formats", "allowed_types"].every((k) => Array.isArray(lim[k]));
  }

  // What the page reads from /api/info before it lets anything be analysed.
  function isInfo(info) {
    return Boolean(info) && typeof info.model_name === "string" && typeof info.model_version === "string" &&
      Array.isArray(info.classes) && info.classes.length > 0 && info.classes.every((c) => c && typeof c.label === "string") &&
      (info.limits === undefined || isLimits(info.limits));
  }

  const BAD_RESULT = "The server's answer is not an analysis this page can read; try again, or reload the page.";

  // Until /api/info answers, nothing can be analysed: ask again with a growing pause (a server restarting
  // answers within seconds), so the page recovers without a reload.
  const INFO_RETRY_MS = [2000, 4000, 8000, 15000, 30000];

  async function loadInfo(attempt) {
    const tries = attempt || 0;
    try {
      const info = await request("/api/info");
      if (!isInfo(info)) throw new ApiError("Its description of the model is not one this page can read.", "bad_response", 200);
      state.info = info;
      state.names = new Map((info.classes || []).map((c) => [c.label, c.display_name]));
      // The alert going away is silent: a screen reader would never hear that the page works again.
      if (!$("service-error").hidden) $("service-back").textContent = "The model service is available again.";
      $("service-error").hidden = true;
      if (tries > 0 && $("tab-model").getAttribute("aria-selected") === "true") showModelTab();
    } catch (err) {
      showServiceError("The model service is not available: " + err.message + " Trying again…");
      const pause = INFO_RETRY_MS[Math.min(tries, INFO_RETRY_MS.length - 1)];
      window.setTimeout(() => loadInfo(tries + 1), pause);
    }
    renderModelLine();
    renderLimits();
    renderAll();
    return state.info;
  }

  function showServiceError(message) {
    const box = $("service-error");
    // An alert's new text is read out: the same words again at each retry (every 30 s) would be too.
    if (box.textContent !== message) box.textContent = message;
    box.hidden = false;
    $("service-back").textContent = ""; // so that the next recovery is said too
  }

  function limits() {
    return (state.info && state.info.limits) || DEFAULT_LIMITS;
  }

  function formatsInWords() {
    return formatList(limits().allowed_formats.map((f) => FORMAT_NAMES[f] || f));
  }

  // ---- theme toggle ----

  function systemTheme() {
    return darkQuery.matches ? "dark" : "light";
  }

  function setupTheme() {
    $("theme-toggle").addEventListener("click", () => {
      const next = currentTheme() === "dark" ? "light" : "dark";
      // Switching to the system's own theme is the way back to following the system: the override goes.
      const follow = next === systemTheme();
      if (follow) delete root.dataset.theme;
      else root.dataset.theme = next;
      try {
        if (follow) window.localStorage.removeItem(THEME_KEY);
        else window.localStorage.setItem(THEME_KEY, next);
      } catch (err) {
        // storage disabled: the choice lasts for this page only
      }
      renderThemeButton();
    });
    darkQuery.addEventListener("change", renderThemeButton);
    renderThemeButton();
  }

  function renderThemeButton() {
    const next = currentTheme() === "dark" ? "light" : "dark";
    const label = "Switch to " + next + " theme" + (next === systemTheme() ? " (the system's)" : "");
    $("theme-toggle").setAttribute("aria-label", label);
    $("theme-toggle").title = label;
    $("theme-label").textContent = next === "dark" ? "Dark" : "Light";
  }

  // ---- tabs (WAI-ARIA tabs pattern: arrow keys move between tabs) ----

  function tabs() {
    return [$("tab-analyse"), $("tab-model")];
  }

  function setupTabs() {
    const all = tabs();
    all.forEach((tab, i) => {
      tab.addEventListener("click", () => selectTab(tab));
      tab.addEventListener("keydown", (event) => {
        const moves = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: all.length - 1 };
        if (!(event.key in moves)) return;
        event.preventDefault();
        const next = all[(moves[event.key] + all.length) % all.length];
        selectTab(next);
        next.focus();
      });
    });
  }

  function selectTab(tab) {
    for (const t of tabs()) {
      const selected = t === tab;
      t.setAttribute("aria-selected", String(selected));
      t.tabIndex = selected ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !selected;
    }
    const hash = tab.id === "tab-model" ? "#model" : "#analyse";
    if (window.location.hash !== hash) window.history.replaceState(null, "", hash);
    if (tab.id === "tab-model") showModelTab();
  }

  // ---- choosing images: click, camera, drag-and-drop, paste ----

  function setupInput() {
    const input = $("file-input");
    const camera = $("camera-input");
    $("choose").addEventListener("click", () => input.click());
    $("camera").addEventListener("click", () => camera.click());
    for (const field of [input, camera]) {
      field.addEventListener("change", () => {
        setFiles(field.files);
        field.value = ""; // choosing the same file again still fires "change"
      });
    }
    $("clear").addEventListener("click", clearAll);

    const zone = $("dropzone");
    let depth = 0;
    const hasFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
    // A link or text dragged in from elsewhere (an address bar, a mail) is a try at an image too, and is answered
    // as a paste of one is. A drag that starts on the page (selected text) is left to the browser.
    let fromPage = false;
    document.addEventListener("dragstart", () => (fromPage = true));
    document.addEventListener("dragend", () => (fromPage = false));
    const isLink = (event) => !fromPage && !hasFiles(event) && event.dataTransfer && event.dataTransfer.types.length > 0;
    // The whole page accepts a drop, so a near miss never opens the image in place of the app.
    window.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      zone.classList.add("dragging");
    });
    window.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) zone.classList.remove("dragging");
    });
    window.addEventListener("dragover", (event) => {
      if (!hasFiles(event) && !isLink(event)) return;
      event.preventDefault();
      // "copy" while busy too: with "none" the drop never fires, and the page could not say why it took nothing.
      event.dataTransfer.dropEffect = "copy";
    });
    window.addEventListener("drop", (event) => {
      if (isLink(event)) {
        event.preventDefault();
        selectTab($("tab-analyse"));
        showInputError(["That is a link or text, not an image file; save the image, then drop or choose the file."]);
        return;
      }
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      zone.classList.remove("dragging");
      selectTab($("tab-analyse")); // a drop on the model tab must not change images out of sight
      // A dropped folder arrives as a file with no type; only its entry, read now or never, says it is a folder.
      const folders = Array.from(event.dataTransfer.items || [])
        .map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry())
        .filter((entry) => entry && entry.isDirectory)
        .map((entry) => entry.name);
      setFiles(event.dataTransfer.files, folders);
    });

    document.addEventListener("paste", (event) => {
      const data = event.clipboardData;
      if (!data) return;
      let files = Array.from(data.files || []);
      if (!files.length) {
        files = Array.from(data.items || [])
          .filter((item) => item.kind === "file")
          .map((item) => item.getAsFile())
          .filter(Boolean);
      }
      event.preventDefault();
      selectTab($("tab-analyse"));
      // The page has no text field: a paste of text or a link is a try at an image, and must not go unanswered.
      if (!files.length) showInputError(["There is no image on the clipboard; copy the image itself (not its link), or choose a file."]);
      else setFiles(files);
    });
  }

  function fileType(file) {
    const match = /\.([a-z0-9]+)$/i.exec(file.name || "");
    return file.type || (match && EXTENSION_TYPES[match[1].toLowerCase()]) || "";
  }

  /** Why the server would refuse this file, in words, or null. Same limits as the server's. */
  function checkFile(file, folders) {
    const lim = limits();
    const name = file.name || "The pasted image";
    if (folders.includes(file.name)) return name + " is a folder; open it and drop or choose the images inside.";
    const type = fileType(file);
    if (!lim.allowed_types.includes(type)) {
      const what = type ? " (it is " + type + ")" : "";
      return name + " is not a " + formatsInWords() + " image" + what + ".";
    }
    if (file.size === 0) return name + " is empty.";
    if (file.size > lim.max_image_bytes) {
      // "over": rounded, 1 MB + 1 byte shows as 1.0 MB, which alone would read as equal to the limit.
      return name + " is " + formatBytes(file.size) + ", over the limit of " + formatBytes(lim.max_image_bytes) + " per image.";
    }
    return null;
  }

  function setFiles(fileList, folders) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    if (state.busy) {
      // The images in the request stay; dropped or pasted ones would otherwise vanish without a word.
      showInputError(["Wait for the analysis to finish (or cancel it), then add the new images again."]);
      return;
    }
    const lim = limits();
    const problems = [];
    let accepted = [];
    for (const file of files) {
      const problem = checkFile(file, folders || []);
      if (problem) problems.push(problem);
      else accepted.push(file);
    }
    if (accepted.length > lim.max_batch_files) {
      const most = lim.max_batch_files;
      problems.push("At most " + images(most) + " can be analysed at once; " +
        (most === 1 ? "the first was kept." : "the first " + most + " were kept."));
      accepted = accepted.slice(0, lim.max_batch_files);
    }
    // A few KB per file for the multipart headers, so the request stays under the server's body limit.
    let total = 0;
    for (let i = 0; i < accepted.length; i += 1) {
      total += accepted[i].size + 4096;
      if (total > lim.max_body_bytes) {
        const left = accepted.length - i;
        problems.push("Together the images exceed " + formatBytes(lim.max_body_bytes) + "; " +
          (left === 1 ? "1 of them was" : left + " of them were") + " left out.");
        accepted = accepted.slice(0, i);
        break;
      }
    }
    showInputError(problems);
    if (!accepted.length) return; // keep what was there before
    releaseItems();
    state.items = accepted.map((file) => ({
      file: file,
      url: URL.createObjectURL(file),
      shown: file, // what url points at: the file, or its upright copy
      thumb: null, // the tile's small copy (an object URL), once made
      unreadable: false,
      result: null,
      error: null,
      analysedAt: null,
    }));
    state.selected = 0;
    state.showAll = false;
    state.requestError = null;
    $("announce").textContent = "";
    renderAll();
    prepare(state.items);
  }

  function showInputError(problems) {
    const box = $("input-error");
    box.replaceChildren();
    if (!problems.length) {
      box.hidden = true;
      return;
    }
    if (problems.length === 1) {
      box.textContent = problems[0];
    } else {
      const list = el("ul");
      for (const p of problems) list.append(el("li", null, p));
      box.append(list);
    }
    box.hidden = false;
  }

  function releaseItems() {
    for (const item of state.items) {
      URL.revokeObjectURL(item.url);
      if (item.thumb) URL.revokeObjectURL(item.thumb);
    }
    state.items = [];
  }

  function clearAll() {
    if (state.busy) return;
    releaseItems();
    state.selected = 0;
    showInputError([]);
    state.requestError = null;
    $("announce").textContent = "";
    renderAll();
    $("choose").focus();
  }

  function current() {
    return state.items[state.selected] || null;
  }

  // ---- analysis ----

  function setupResults() {
    $("analyse").addEventListener("click", analyse);
    // A slow upload or a server that takes long must not hold the page (and the photo) for two minutes.
    $("cancel").addEventListener("click", () => {
      if (!state.cancel) return;
      $("analyse").focus(); // Cancel hides as the request ends: focus stays on the next step
      state.cancel.abort();
    });
    // Escape ends it too, from wherever focus is (it stays there, unless on Cancel, which hides).
    document.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || event.defaultPrevented || !state.cancel) return;
      event.preventDefault();
      if (document.activeElement === $("cancel")) $("analyse").focus();
      state.cancel.abort();
    });
    $("toggle-all").addEventListener("click", () => {
      state.showAll = !state.showAll;
      renderResult();
    });
    $("export").addEventListener("click", () => {
      const item = current();
      if (item && item.result) exportOne(item);
    });
    $("export-all").addEventListener("click", exportAll);
  }

  async function analyse() {
    const items = state.items;
    if (state.busy || !items.length || !state.info) return;
    // The old outcome goes now: during the request the panel shows only the busy state, and a failure is
    // never drawn next to a result it did not produce (nor exported as if it were current).
    for (const item of items) Object.assign(item, { result: null, error: null, analysedAt: null });
    state.requestError = null;
    showInputError([]);
    $("announce").textContent = "";
    const cancel = new AbortController();
    state.cancel = cancel;
    setBusy(true);
    const query = "?top_k=" + TOP_K + "&heatmap=true";
    try {
      if (items.length === 1) {
        const form = new FormData();
        form.append("file", items[0].file, uploadName(items[0].file, 0));
        const result = await request("/api/predict" + query, { method: "POST", body: form, cancel: cancel.signal });
        if (!isResult(result)) throw new ApiError(BAD_RESULT, "bad_response", 200);
        Object.assign(items[0], { result: result, error: null, analysedAt: new Date() });
      } else {
        const form = new FormData();
        items.forEach((item, i) => form.append("files", item.file, uploadName(item.file, i)));
        const body = await request("/api/predict/batch" + query, { method: "POST", body: form, cancel: cancel.signal });
        // One entry per image, in order: with any other count no entry can be matched to its image.
        if (!Array.isArray(body.results) || body.results.length !== items.length) {
          throw new ApiError(BAD_RESULT, "bad_response", 200);
        }
        const now = new Date();
        body.results.forEach((entry, i) => {
          const refused = entry && entry.error && typeof entry.error.message === "string" && entry.error.message;
          if (refused) Object.assign(items[i], { result: null, error: sentence(refused), analysedAt: now });
          else if (isResult(entry)) Object.assign(items[i], { result: Object.assign({ model: body.model }, entry), error: null, analysedAt: now });
          else Object.assign(items[i], { result: null, error: BAD_RESULT, analysedAt: now });
        });
      }
    } catch (err) {
      if (err !== CANCELLED) state.requestError = "The analysis failed: " + err.message;
    } finally {
      state.cancel = null;
      setBusy(false);
      renderAll();
      announce();
    }
    if (cancel.signal.aborted) {
      $("announce").textContent = "Analysis cancelled; choose other images or press Analyse again.";
      return;
    }
    // Not awaited: a slow /api/info must not hold back the result; it is redrawn when the description comes.
    if (items.some((item) => item.result && fromAnotherModel(item.result))) reloadInfo();
    if (state.items !== items) return;
    const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    const behavior = still ? "auto" : "smooth";
    if (window.matchMedia("(max-width: 900px)").matches) {
      // On a phone the result sits below the image: bring it into view.
      $("results").scrollIntoView({ block: "start", behavior: behavior });
      return;
    }
    // The heatmap controls appear above the buttons and can push the focused one below the fold.
    const focused = document.activeElement;
    if (focused && focused !== document.body) {
      const box = focused.getBoundingClientRect();
      if (box.bottom > window.innerHeight || box.top < 0) focused.scrollIntoView({ block: "nearest", behavior: behavior });
    }
  }

  // File names often carry a patient's name, and the server needs none (a batch's answers come in order): each
  // image is sent as image-1.jpg, image-2.png, …, so the name never leaves the page, not even to a proxy.
  function uploadName(file, index) {
    const extension = /\.[A-Za-z0-9]{1,5}$/.exec(file.name || "");
    return "image-" + (index + 1) + (extension ? extension[0].toLowerCase() : "");
  }

  // The server can be given another model while the page is open: its answers then carry classes, a
  // temperature and checks that the page's /api/info does not describe, so the page reads it again.
  function fromAnotherModel(result) {
    const model = result.model || {};
    return model.name !== state.info.model_name || model.version !== state.info.model_version ||
      Object.keys(result.predictions).some((label) => !state.names.has(label));
  }

  async function reloadInfo() {
    state.reportRequested = false; // the report, too, is the new model's
    await loadInfo();
    if ($("tab-model").getAttribute("aria-selected") === "true") showModelTab();
  }

  function setBusy(busy) {
    state.busy = busy;
    // On the result only: the "Analysing…" status beside it must still be read out while busy.
    $("result").setAttribute("aria-busy", String(busy));
    $("analyse").classList.toggle("is-busy", busy);
    $("busy").hidden = !busy;
    $("cancel").hidden = !busy;
    const n = state.items.length;
    $("busy-text").textContent = n > 1 ? "Analysing " + n + " images…" : "Analysing…";
    renderAll();
  }

  // ---- rendering the analyse tab ----

  function renderAll() {
    renderViewer();
    renderResult();
    renderBatch();
    renderButtons();
  }

  function renderButtons() {
    const n = state.items.length;
    const item = current();
    // While busy the button stays focusable (aria-disabled), so keyboard focus is not thrown to the page.
    $("analyse").disabled = !state.busy && (!n || !state.info);
    $("analyse").setAttribute("aria-disabled", String(state.busy || !n || !state.info));
    $("analyse-label").textContent = state.busy ? "Analysing…" : n > 1 ? "Analyse " + n + " images" : "Analyse";
    $("clear").disabled = state.busy || !n;
    $("choose").disabled = state.busy;
    $("camera").disabled = state.busy;
    $("export").disabled = state.busy || !(item && item.result);
    const analysed = state.items.filter((i) => i.result).length;
    $("export-all").hidden = n < 2;
    $("export-all").disabled = state.busy || analysed === 0;
  }

  function renderViewer() {
    const item = current();
    const viewer = $("viewer");
    const preview = $("preview");
    const canvas = $("heatmap");
    viewer.hidden = !item;
    $("dropzone").classList.toggle("compact", Boolean(item));
    if (!item) {
      preview.removeAttribute("src");
      canvas.hidden = true;
      $("heatmap-controls").hidden = true;
      return;
    }
    if (preview.getAttribute("src") !== item.url) {
      $("viewer").classList.remove("unreadable");
      preview.src = item.url;
    }
    preview.alt = "Selected image " + (item.file.name || "");
    // A map with no contrast (the server scales it to 0..1; all zeros when flat) would be an invisible overlay.
    const map = item.result && item.result.heatmap;
    const flat = Boolean(map) && map.values.every((row) => row.every((v) => !(Number(v) > 0)));
    const heatmap = flat ? null : map;
    $("preview-caption").textContent = (item.file.name || "Pasted image") + " · " + formatBytes(item.file.size) +
      (flat ? " · no region stands out in the class activation map" : "");
    $("heatmap-controls").hidden = !heatmap;
    if (heatmap) {
      drawHeatmap(heatmap);
      canvas.dataset.label = heatmap.label;
      canvas.hidden = !$("heatmap-toggle").checked;
      $("heatmap-caption").textContent = "Class activation map for " + displayName(heatmap.label) +
        ": the regions that raised this class's score. It is not an outline of a lesion.";
    } else {
      canvas.hidden = true;
      delete canvas.dataset.label;
    }
  }

  function renderResult() {
    const item = current();
    const result = item && item.result;
    const failure = state.busy ? null : errorText(item);
    $("results-empty").hidden = state.busy || Boolean(failure) || Boolean(result);
    $("result").hidden = state.busy || !result;
    $("result-error").textContent = failure || "";
    $("result-error").hidden = !failure;
    if (!result) return;

    renderWarnings($("warnings"), result);

    const primary = result.primary;
    $("primary-name").textContent = primary.display_name || displayName(primary.label);
    $("primary-prob").textContent = pct(primary.probability);
    $("primary-bar").style.width = (primary.probability * 100).toFixed(2) + "%";
    const temperature = state.info && state.info.temperature;
    const calibrated = typeof temperature === "number" && Math.abs(temperature - 1) > 1e-6;
    const noFit = noTemperatureFit(state.info);
    $("prob-kind").textContent = !calibrated ? "model probability (not calibrated)"
      : noFit ? "temperature-scaled probability (no calibration fit)" : "calibrated probability";
    $("prob-kind").title = !calibrated ? ""
      : "Temperature scaling, T = " + fixed(temperature, 3) + (noFit ? "; the fit found no minimum (Model tab)" : "");

    $("top-heading").textContent = "Top " + result.top.length;
    const top = $("top-list");
    top.replaceChildren(...result.top.map((t, i) => barRow(t.label, t.display_name, t.probability, i === 0)));

    const all = Object.entries(result.predictions).sort((a, b) => b[1] - a[1]);
    const toggle = $("toggle-all");
    toggle.hidden = all.length <= result.top.length;
    toggle.setAttribute("aria-expanded", String(state.showAll));
    toggle.textContent = state.showAll ? "Hide the full list" : "Show all " + all.length + " classes";
    const list = $("all-list");
    list.hidden = !state.showAll;
    if (state.showAll) {
      list.replaceChildren(...all.map(([label, p], i) => barRow(label, displayName(label), p, i === 0)));
    }

    const model = result.model || {};
    const when = item.analysedAt ? item.analysedAt.toLocaleString() : "";
    $("result-note").textContent = "Model " + (model.name || "?") + " " + (model.version || "") +
      (model.demo ? " (demo)" : "") + (when ? " · analysed " + when : "") + ". " + DISCLAIMER;
  }

  // The request that failed as a whole (server down, 4xx for the one image), else this image's own refusal.
  function errorText(item) {
    if (state.requestError) return state.requestError;
    if (item && item.error) return state.items.length > 1 ? (item.file.name || "This image") + ": " + item.error : item.error;
    return null;
  }

  // Screen readers hear the outcome of Analyse (the result panel itself is not a live region).
  function announce() {
    const item = current();
    let text = "";
    // A failed request is not said here: its message box is an alert, read out as it appears.
    if (state.requestError) return;
    if (state.items.length > 1) text = "Analysis done: " + $("batch-summary").textContent + ".";
    else if (item && item.result) {
      const p = item.result.primary;
      const flags = warningsOf(item.result).map((w) => w.title).join(" ");
      text = "Most likely: " + (p.display_name || displayName(p.label)) + ", " + pct(p.probability) + ". " + flags;
    }
    $("announce").textContent = text.trim();
  }

  function warningsOf(result) {
    const out = [];
    if (result.in_distribution === false) {
      out.push({
        title: "This does not look like a skin photo.",
        text: "The image is unlike the photos the model learned from, so the classes below say little.",
        short: "not a skin photo?",
      });
    }
    if (result.confidence === "low") {
      out.push({
        title: "The model is not confident about this image.",
        text: lowConfidenceText(state.info, result.primary && result.primary.probability),
        short: "low confidence",
      });
    }
    return out;
  }

  // What export measured, not a claim about this image ("no class stands out" was said of 83 % answers too).
  function lowConfidenceText(info, top) {
    const u = (info && info.uncertainty) || {};
    const end = "; read the list below as uncertain.";
    // Past 1 no answer can be confident: the reason is the model, not this image's classes.
    if (neverConfident(u)) {
      return "It never is: on its validation images even its most confident answers were right less often than " +
        "the target precision, so every result is marked this way" + end;
    }
    const conf = info && info.thresholds && info.thresholds.confidence;
    if (!isNumber(u.min_probability) || !conf || !isNumber(conf.target_precision)) {
      return "Its top class is under the probability the model needs to count as confident" + end;
    }
    return "Its top class is under " + pctApart(u.min_probability, top) + ": on the validation images, the answers from " +
      "there up were right " + pct(conf.target_precision, 0) + " of the time or more" + end;
  }

  // Export marks a temperature at a bound of its search "degenerate": it found no minimum, so it calibrates nothing.
  function noTemperatureFit(info) {
    return Boolean(info && info.calibration && info.calibration.degenerate);
  }

  // Export's threshold when no confidence reached the target precision: above any probability.
  function neverConfident(u) {
    return Boolean(u.confidence) && typeof u.min_probability === "number" && u.min_probability > 1;
  }

  // What this model cannot flag. Without its thresholds the page never warns, and no warning must not read
  // as "confident, and a skin photo".
  function checksOff(u) {
    const off = [];
    if (!u.confidence) off.push("low confidence");
    if (!u.ood) off.push("images unlike the photos it learned from");
    return off;
  }

  // One check off is "it", not "either": a model may have its confidence threshold and no OOD score.
  function checksOffSentence(off, absence) {
    return "This model does not flag " + off.join(" or ") + ", so the absence of " + absence +
      " says nothing about " + (off.length > 1 ? "either" : "it") + ".";
  }

  function renderWarnings(box, result) {
    box.replaceChildren(
      ...warningsOf(result).map((w) => {
        const div = el("div", "alert alert-warn");
        div.setAttribute("role", "status");
        div.append(el("strong", null, w.title), " ", el("span", null, w.text));
        return div;
      })
    );
    const off = checksOff((state.info && state.info.uncertainty) || {});
    if (off.length) {
      box.append(el("p", "hint checks-off", checksOffSentence(off, "a warning here")));
    }
  }

  function barRow(label, name, probability, highlight) {
    const li = el("li", "bar-row" + (highlight ? " is-top" : ""));
    const title = el("span", "bar-name", name || displayName(label));
    if (name && name !== label) title.title = label;
    const track = el("span", "bar-track");
    track.setAttribute("aria-hidden", "true");
    const fill = el("span", "bar-fill");
    fill.style.width = Math.max(0, Math.min(100, probability * 100)).toFixed(2) + "%";
    track.append(fill);
    li.dataset.label = label;
    li.append(title, el("span", "bar-value", pct(probability)), track);
    return li;
  }

  function renderBatch() {
    const items = state.items;
    $("batch").hidden = items.length < 2;
    if (items.length < 2) return;
    const analysed = items.filter((i) => i.result).length;
    const failed = items.filter((i) => i.error).length;
    let summary = items.length + " images";
    if (analysed) summary += " · " + analysed + " analysed";
    if (failed) summary += " · " + failed + " refused";
    $("batch-summary").textContent = summary;
    // The tiles are rebuilt on every redraw (an analysis ending, too): a keyboard user's place is kept.
    const focused = Array.from($("batch-list").querySelectorAll(".batch-item")).indexOf(document.activeElement);
    $("batch-list").replaceChildren(
      ...items.map((item, i) => {
        const li = el("li");
        const button = el("button", "batch-item" + (item.error ? " has-error" : ""));
        button.type = "button";
        button.setAttribute("aria-pressed", String(i === state.selected));
        // A file the browser cannot decode gets a plain tile, not a broken-image icon; so does one not ready yet.
        let thumb = el("span", "thumb");
        if (item.unreadable) thumb = el("span", "thumb thumb-missing", "?");
        else if (item.thumb) {
          thumb = el("img", "thumb");
          thumb.alt = "";
          thumb.src = item.thumb;
        }
        const text = el("span", "batch-text");
        const name = el("span", "batch-name", item.file.name || "Image " + (i + 1));
        name.title = name.textContent; // cut with "…" when long
        text.append(name);
        if (item.result) {
          const p = item.result.primary;
          const line = el("span", "batch-primary");
          line.append(el("strong", null, p.display_name || displayName(p.label)), " · " + pct(p.probability));
          text.append(line);
          const flags = warningsOf(item.result);
          if (flags.length) {
            const chips = el("span", "chips");
            for (const f of flags) chips.append(el("span", "chip chip-warn", f.short));
            text.append(chips);
          }
        } else if (item.error) {
          text.append(el("span", "batch-error", item.error));
        } else {
          text.append(el("span", "hint", state.busy ? "Analysing…" : "Not analysed yet"));
        }
        button.append(thumb, text);
        button.addEventListener("click", () => {
          state.selected = i;
          renderAll();
          $("batch-list").querySelectorAll(".batch-item")[i].focus(); // the tiles were rebuilt
        });
        li.append(button);
        return li;
      })
    );
    const tiles = $("batch-list").querySelectorAll(".batch-item");
    if (focused >= 0 && tiles[focused]) tiles[focused].focus({ preventScroll: true });
  }

  // ---- heatmap ----

  // Turbo colour map (Google, Apache-2.0), polynomial approximation: t in 0..1 -> [r, g, b] in 0..255.
  function turbo(t) {
    const x = Math.max(0, Math.min(1, t));
    const poly = (c) => c[0] + x * (c[1] + x * (c[2] + x * (c[3] + x * (c[4] + x * c[5]))));
    const clamp = (v) => Math.max(0, Math.min(255, Math.round(v)));
    return [
      clamp(poly([34.61, 1172.33, -10793.56, 33300.12, -38394.49, 14825.05])),
      clamp(poly([23.31, 557.33, 1225.33, -3574.96, 1073.77, 707.56])),
      clamp(poly([27.2, 3211.1, -15327.97, 27814.0, -22569.18, 6838.66])),
    ];
  }

  function drawHeatmap(heatmap) {
    const w = heatmap.width;
    const h = heatmap.height;
    const small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    const smallCtx = small.getContext("2d");
    const pixels = smallCtx.createImageData(w, h);
    for (let r = 0; r < h; r += 1) {
      for (let c = 0; c < w; c += 1) {
        const v = Math.max(0, Math.min(1, Number(heatmap.values[r][c]) || 0));
        const [red, green, blue] = turbo(v);
        const at = (r * w + c) * 4;
        pixels.data[at] = red;
        pixels.data[at + 1] = green;
        pixels.data[at + 2] = blue;
        // Weak regions stay mostly see-through, so the skin under them remains readable.
        pixels.data[at + 3] = Math.round(255 * (0.15 + 0.85 * v));
      }
    }
    smallCtx.putImageData(pixels, 0, 0);
    placeHeatmap();
    // Smooth upsampling here; CSS stretches the canvas over the part of the photo the model saw. The cells go
    // where the network centres them (the answer's extent: B3's first cells sit on the image's first pixels, so
    // its grid reaches past the edges); the canvas cuts off what lies outside.
    const extent = heatmap.extent || { left: 0, top: 0, width: 1, height: 1 };
    const scale = Math.max(1, Math.ceil(480 / Math.max(w, h)));
    const canvas = $("heatmap");
    const side = (cells, part) => Math.max(1, Math.min(2048, Math.round((cells * scale) / part)));
    canvas.width = side(w, extent.width);
    canvas.height = side(h, extent.height);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(
      small,
      extent.left * canvas.width,
      extent.top * canvas.height,
      extent.width * canvas.width,
      extent.height * canvas.height,
    );
    applyOpacity();
  }

  // With "stretch" the model saw the whole photo, so the grid covers all of it; with "center_crop" it saw
  // the central part with the input's aspect ratio, so the grid covers only that part.
  function placeHeatmap() {
    const canvas = $("heatmap");
    const preview = $("preview");
    const info = state.info || {};
    const mode = info.resize && info.resize.mode;
    const size = info.input_size || [1, 1]; // [height, width]
    const box = { left: 0, top: 0, width: 100, height: 100 };
    if (mode === "center_crop") {
      // Not loaded yet: the preview's load event places it again.
      if (preview.naturalWidth) {
        const photo = preview.naturalWidth / preview.naturalHeight;
        const input = size[1] / size[0];
        if (photo > input) box.width = (100 * input) / photo;
        else box.height = (100 * photo) / input;
        box.left = (100 - box.width) / 2;
        box.top = (100 - box.height) / 2;
      }
    }
    canvas.style.left = box.left + "%";
    canvas.style.top = box.top + "%";
    canvas.style.width = box.width + "%";
    canvas.style.height = box.height + "%";
  }

  function drawLegend() {
    const canvas = $("legend");
    const ctx = canvas.getContext("2d");
    for (let x = 0; x < canvas.width; x += 1) {
      const [r, g, b] = turbo(x / (canvas.width - 1));
      ctx.fillStyle = "rgb(" + r + "," + g + "," + b + ")";
      ctx.fillRect(x, 0, 1, canvas.height);
    }
  }

  function applyOpacity() {
    const value = Number($("heatmap-opacity").value);
    $("heatmap").style.opacity = String(value / 100);
    $("opacity-value").textContent = value + "\u00a0%";
    $("heatmap-opacity").setAttribute("aria-valuetext", value + "\u00a0%"); // "55 %", not a bare "55"
  }

  function setupHeatmapControls() {
    // A new photo (another image chosen, or its upright copy) can have another shape than the last.
    $("preview").addEventListener("load", placeHeatmap);
    $("preview").addEventListener("error", () => {
      if ($("preview").getAttribute("src")) $("viewer").classList.add("unreadable");
    });
    $("heatmap-toggle").addEventListener("change", () => {
      const item = current();
      $("heatmap").hidden = !($("heatmap-toggle").checked && item && item.result && item.result.heatmap);
      $("heatmap-opacity").disabled = !$("heatmap-toggle").checked;
    });
    $("heatmap-opacity").addEventListener("input", applyOpacity);
    applyOpacity();
  }

  // ---- thumbnails ----

  // Each image is turned upright and given its tile's copy in turn, not all at once: every decode of a 12 MP
  // photo takes about 50 MB while it lasts.
  async function prepare(items) {
    for (const item of items) {
      if (state.items !== items) return; // other images were chosen meanwhile
      await showUpright(item);
      if (state.items !== items) return;
      await makeThumb(item);
    }
  }

  // A tile shows 52 px: given the photo itself, each tile held a full-size decode (16 photos of 12 MP took
  // Chromium's page from 150 to 640 MB, enough to end a phone's tab). It gets a copy of its own size instead.
  const THUMB_PX = 104; // 52 px at two device pixels to one

  async function makeThumb(item) {
    try {
      const probe = new Image();
      // Its size is known at load; an image that is never drawn is never decoded.
      await new Promise((resolve, reject) => {
        probe.onload = resolve;
        probe.onerror = reject;
        probe.src = item.url;
      });
      const scale = Math.min(1, THUMB_PX / Math.min(probe.naturalWidth, probe.naturalHeight));
      const w = Math.max(1, Math.round(probe.naturalWidth * scale));
      const h = Math.max(1, Math.round(probe.naturalHeight * scale));
      // Decoded off the main thread (from the <img>, each photo held the page up to 0.2 s); upright, as the
      // <img> shows it; only the small copy stays.
      const bitmap = await createImageBitmap(item.shown, { resizeWidth: w, resizeHeight: h, resizeQuality: "medium" });
      const canvas = document.createElement("canvas");
      canvas.width = w;
      canvas.height = h;
      canvas.getContext("2d").drawImage(bitmap, 0, 0, w, h);
      bitmap.close();
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
      if (!blob) throw new Error("no copy");
      if (!state.items.includes(item)) return;
      item.thumb = URL.createObjectURL(blob);
    } catch (err) {
      item.unreadable = true;
    }
    if (state.items.includes(item)) renderBatch();
  }

  // ---- orientation ----

  // The server turns an image upright by its EXIF orientation before the model sees it, so the heatmap is drawn
  // for the upright image. Browsers turn JPEG and PNG too, but Chromium shows a WebP as stored: for such a file
  // the page shows an upright copy (the upload stays the original file).
  const TURNED_WEBP = // 2×1 pixels, EXIF orientation 6 ("turn 90° clockwise"): shown 1×2 where WebP is turned
    "UklGRlAAAABXRUJQVlA4WAoAAAAIAAAAAQAAAAAAVlA4TA8AAAAvAQAAAAcQ/Y/+ByKi/wEARVhJRhoAAABNTQAqAAAACAABARIAAwAAAAEABgAAAAAAAA==";
  let browserTurnsWebp = null;

  function turnsWebp() {
    if (!browserTurnsWebp) {
      browserTurnsWebp = new Promise((resolve) => {
        const probe = new Image();
        probe.onload = () => resolve(probe.naturalWidth === 1);
        probe.onerror = () => resolve(true); // no WebP at all: nothing to turn
        probe.src = "data:image/webp;base64," + TURNED_WEBP;
      });
    }
    return browserTurnsWebp;
  }

  async function showUpright(item) {
    let blob = null;
    try {
      blob = await uprightWebp(item.file);
    } catch (e) {
      return; // the photo as the browser shows it
    }
    if (!blob || !state.items.includes(item)) return;
    URL.revokeObjectURL(item.url);
    item.url = URL.createObjectURL(blob);
    item.shown = blob;
    renderViewer();
  }

  // A PNG of the WebP `file` turned upright, or null when it needs no turning (or the browser does it).
  async function uprightWebp(file) {
    const head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
    if (text(head, 0) !== "RIFF" || text(head, 8) !== "WEBP") return null;
    const orientation = webpOrientation(new DataView(await file.arrayBuffer()));
    if (orientation === 1 || (await turnsWebp())) return null;
    const bitmap = await createImageBitmap(file);
    // A copy for the screen: past 2048 px a side it is scaled down (the PNG of a 12 MP photo takes seconds).
    const scale = Math.min(1, 2048 / Math.max(bitmap.width, bitmap.height));
    const w = Math.max(1, Math.round(bitmap.width * scale));
    const h = Math.max(1, Math.round(bitmap.height * scale));
    const canvas = document.createElement("canvas");
    canvas.width = orientation >= 5 ? h : w;
    canvas.height = orientation >= 5 ? w : h;
    const ctx = canvas.getContext("2d");
    // EXIF orientations 2..8 as canvas transforms (mirrors, then turns), as Pillow's exif_transpose applies them.
    const transforms = {
      2: [-1, 0, 0, 1, w, 0],
      3: [-1, 0, 0, -1, w, h],
      4: [1, 0, 0, -1, 0, h],
      5: [0, 1, 1, 0, 0, 0],
      6: [0, 1, -1, 0, h, 0],
      7: [0, -1, -1, 0, h, w],
      8: [0, -1, 1, 0, 0, w],
    };
    ctx.setTransform(...transforms[orientation]);
    ctx.drawImage(bitmap, 0, 0, w, h);
    bitmap.close();
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  function text(bytes, at) {
    return String.fromCharCode(...bytes.subarray(at, at + 4));
  }

  // The orientation (1..8) in a WebP's EXIF chunk, read as libwebp (and so Pillow) does: only in the extended
  // format (a VP8X chunk first) that flags EXIF. 1 when there is none or it cannot be read.
  function webpOrientation(view) {
    const bytes = new Uint8Array(view.buffer);
    if (view.byteLength < 30 || text(bytes, 12) !== "VP8X" || !(bytes[20] & 0x08)) return 1;
    for (let at = 12; at + 8 <= view.byteLength; ) {
      const size = view.getUint32(at + 4, true);
      if (text(bytes, at) === "EXIF") return tiffOrientation(view, at + 8, Math.min(at + 8 + size, view.byteLength));
      at += 8 + size + (size % 2);
    }
    return 1;
  }

  function tiffOrientation(view, start, end) {
    const bytes = new Uint8Array(view.buffer);
    if (text(bytes, start) === "Exif") start += 6; // some writers keep JPEG's "Exif\0\0" before the TIFF header
    if (start + 8 > end) return 1;
    const order = view.getUint16(start);
    if (order !== 0x4949 && order !== 0x4d4d) return 1;
    const little = order === 0x4949;
    const ifd = start + view.getUint32(start + 4, little);
    if (ifd + 2 > end) return 1;
    const count = view.getUint16(ifd, little);
    for (let i = 0; i < count && ifd + 14 + i * 12 <= end; i += 1) {
      const entry = ifd + 2 + i * 12;
      if (view.getUint16(entry, little) === 0x0112) {
        const value = view.getUint16(entry + 8, little);
        return value >= 1 && value <= 8 ? value : 1;
      }
    }
    return 1;
  }

  // ---- export ----

  function record(item) {
    const result = item.result;
    const predictions = Object.entries(result.predictions)
      .sort((a, b) => b[1] - a[1])
      .map(([label, probability]) => ({ label: label, display_name: displayName(label), probability: probability }));
    const model = result.model || {};
    const out = {
      timestamp: (item.analysedAt || new Date()).toISOString(),
      file_name: item.file.name || "",
      primary_prediction: result.primary,
      predictions: predictions,
      model: { name: model.name, version: model.version, demo: Boolean(model.demo) },
      disclaimer: DISCLAIMER,
    };
    if ("confidence" in result) out.confidence = result.confidence;
    if ("in_distribution" in result) out.in_distribution = result.in_distribution;
    out.checks = checksRecord();
    return out;
  }

  // Which checks the model has, as the page says under the result: without them no flag is ever raised, and
  // a record without one must not read as "confident, and a skin photo".
  function checksRecord() {
    const u = (state.info && state.info.uncertainty) || {};
    const out = { confidence: Boolean(u.confidence), in_distribution: Boolean(u.ood) };
    const off = checksOff(u);
    if (off.length) {
      const why = (u.notes || []).join("; ");
      out.note = checksOffSentence(off, "a flag in this record") + (why ? " (" + why + ")" : "");
    }
    // A "low" in every record says nothing of the image: the reason goes with it, as the page gives it.
    if (neverConfident(u)) {
      out.confidence_note = "every answer of this model is marked low: on its validation images no confidence " +
        "threshold reached the target precision";
    }
    return out;
  }

  function stamp(date) {
    return date.toISOString().replace(/\.\d+Z$/, "Z").replace(/:/g, "-");
  }

  function stem(name) {
    const base = String(name || "image").normalize("NFC").replace(/\.[^.]+$/, "");
    // Letters (with their marks: "फोटो") and digits of any script stay; separators and control characters go.
    return base.replace(/[^\p{L}\p{M}\p{N}._-]+/gu, "_").slice(0, 60) || "image";
  }

  function download(fileName, data) {
    const blob = new Blob([JSON.stringify(data, null, 2) + "\n"], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const link = el("a");
    link.href = url;
    link.download = fileName;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function exportOne(item) {
    const data = record(item);
    download("analysis-" + stem(item.file.name) + "-" + stamp(item.analysedAt || new Date()) + ".json", data);
  }

  function exportAll() {
    const done = state.items.filter((i) => i.result);
    if (!done.length) return;
    const model = done[0].result.model || {};
    const now = new Date();
    download("analyses-" + stamp(now) + ".json", {
      timestamp: now.toISOString(),
      model: { name: model.name, version: model.version, demo: Boolean(model.demo) },
      analyses: done.map(record),
      refused: state.items.filter((i) => i.error).map((i) => ({ file_name: i.file.name, error: i.error })),
      disclaimer: DISCLAIMER,
    });
  }

  // ---- header and limits ----

  function renderModelLine() {
    const line = $("model-line");
    line.replaceChildren();
    const info = state.info;
    if (!info) {
      line.textContent = "Model service unavailable";
      return;
    }
    line.append(el("span", "model-name", info.model_name + " " + info.model_version));
    if (info.demo) line.append(" ", el("span", "badge badge-warn", "Demo model"));
  }

  function renderLimits() {
    const lim = limits();
    $("limits-hint").textContent = formatsInWords() + ", up to " + formatBytes(lim.max_image_bytes) +
      " each; up to " + images(lim.max_batch_files) + " at once.";
    // The pickers offer only what this server takes (SKIN_ALLOWED_FORMATS), by type and by extension.
    const extensions = lim.allowed_formats.flatMap((f) => FORMAT_EXTENSIONS[f] || []);
    $("file-input").accept = lim.allowed_types.concat(extensions).join(",");
    $("camera-input").accept = lim.allowed_types.join(",");
  }

  // ---- model tab ----

  async function showModelTab() {
    const info = state.info || (await state.infoReady);
    if (!info) {
      $("model-facts").replaceChildren(el("dt", null, "Model"), el("dd", null, "The model service is not available."));
      return;
    }
    renderModelFacts(info);
    if (state.reportRequested) return;
    state.reportRequested = true;
    if (!info.has_report) {
      showReportMissing("This model bundle has no evaluation report.");
      return;
    }
    // A slow server left the Evaluation card empty, with nothing to say that anything was coming.
    showReportMissing("Loading the evaluation report…");
    try {
      const report = await request("/api/report");
      if (state.info !== info) return; // the server changed models meanwhile: this report is the old one's
      renderReport(report);
    } catch (err) {
      if (state.info !== info) return;
      state.reportRequested = false; // try again next time the tab opens
      showReportMissing(
        err.status === 404 ? "This model bundle has no evaluation report." : "The report could not be loaded: " + err.message
      );
    }
  }

  function facts(list, rows) {
    list.replaceChildren();
    for (const [term, value] of rows) {
      if (value === undefined || value === null || value === "") continue;
      const wrap = el("div", "fact");
      const dd = el("dd");
      if (value instanceof Node) dd.append(value);
      else dd.textContent = String(value);
      wrap.append(el("dt", null, term), dd);
      list.append(wrap);
    }
  }

  function code(text, title) {
    const node = el("code", null, text);
    if (title) node.title = title;
    return node;
  }

  function renderModelFacts(info) {
    $("demo-badge").hidden = !info.demo;
    const classes = el("details", "class-list");
    classes.append(el("summary", null, info.num_classes + " classes"));
    const names = el("ul");
    for (const c of info.classes) names.append(el("li", null, c.display_name));
    classes.append(names);
    const size = info.input_size || [];
    const resize = info.resize || {};
    const ort = info.onnxruntime || {};
    const sha = info.model_sha256 || "";
    facts($("model-facts"), [
      ["Name", info.model_name],
      ["Version", info.model_version],
      ["Architecture", info.architecture],
      ["Trained on", info.trained_on],
      ["Created", info.created ? formatDate(info.created) : ""],
      ["Classes", classes],
      ["Input", size.length === 2 ? size[1] + " × " + size[0] + " px, " + (resize.mode || "stretch") + " resize (" + (resize.filter || "bilinear") + ")" : ""],
      ["Temperature", typeof info.temperature === "number" ? fixed(info.temperature, 3) + (Math.abs(info.temperature - 1) > 1e-6 ? (noTemperatureFit(info) ? " (no real fit: see Calibration)" : " (calibrated)") : " (no calibration)") : ""],
      ["Heatmap", info.has_heatmap ? "Class activation map" : "Not available for this model"],
      ["Uncertainty checks", uncertaintyFacts(info.uncertainty || {})],
      ["Runtime", runtimeLine(ort)],
      ["Model SHA-256", sha ? code(sha.slice(0, 16) + "…", sha) : ""],
      ["Data fingerprint", info.data_fingerprint ? code(info.data_fingerprint) : ""],
    ]);
    const note = $("demo-note");
    note.hidden = !info.demo;
    if (info.demo) {
      note.textContent = "This is a demo model: it was not trained on the clinical data set, so its predictions " +
        "and the numbers below do not describe a real classifier.";
    }
  }

  function uncertaintyFacts(u) {
    const list = el("ul", "plain-list");
    if (neverConfident(u)) {
      list.append(el("li", null, "Low confidence for every result: on the validation images no confidence " +
        "threshold reached the target precision"));
    } else if (u.confidence) {
      list.append(el("li", null, "Low confidence when the top class is under " + pct(u.min_probability)));
    }
    if (u.ood && u.ood_score) {
      // in_distribution_when reads "<= 77.15365858134166": say the flagged side, the number rounded.
      const when = /^\s*([<>]=)\s*(\S+)\s*$/.exec(String(u.ood_score.in_distribution_when || ""));
      const side = when ? (when[1] === "<=" ? " above " : " below ") + Number(when[2]).toPrecision(4) : "";
      const item = el("li", null, "Unlike the training photos when the " + u.ood_score.name + " score is" + side);
      item.title = u.ood_score.description || "";
      list.append(item);
    }
    if (!u.confidence || !u.ood) {
      const why = (u.notes || []).join("; ");
      list.append(el("li", null, "Not flagged: " + checksOff(u).join(" or ") + (why ? " · " + why : "")));
    }
    return list;
  }

  // bf16 can change a near-tie's answer, so the page says when it serves and what export measured it to change.
  function runtimeLine(ort) {
    const threads = ort.threads + (ort.threads === 1 ? " thread" : " threads");
    if (!ort.openvino || ort.openvino === "off") {
      return "onnxruntime " + (ort.version || "?") + " · " + (ort.providers || []).join(", ") + " · " + threads;
    }
    let line = "OpenVINO " + ort.openvino + " · " + threads;
    if (ort.openvino === "bf16") {
      const check = ort.bf16_check || {};
      line += check.measured && typeof check.agreement === "number"
        ? " · same top class as fp32 on " + pct(check.agreement) + " of the test images" + heatmapWords(check)
        : " · its agreement with fp32 was not measured";
    }
    return line;
  }

  // Bundles exported before the heatmap check have no heatmap_agreement: nothing said of it then.
  function heatmapWords(check) {
    if (typeof check.heatmap_agreement !== "number") return "";
    return ", the same heatmap on " + pct(check.heatmap_agreement);
  }

  function showReportMissing(message) {
    const box = $("report-missing");
    box.textContent = message;
    box.hidden = false;
    $("report-stats").replaceChildren();
    $("calibration").hidden = true;
    $("per-class").hidden = true;
    $("confusion").hidden = true;
    $("extra-report").hidden = true;
  }

  function isMetricRow(value) {
    return value && typeof value === "object" && !Array.isArray(value) && "precision" in value && "recall" in value;
  }

  function isNumber(value) {
    return typeof value === "number" && isFinite(value);
  }

  function stat(label, value, sub) {
    const div = el("div", "stat");
    div.append(el("span", "stat-label", label), el("span", "stat-value", value));
    if (sub) div.append(el("span", "stat-sub", sub));
    return div;
  }

  function renderReport(report) {
    $("report-missing").hidden = true;
    const macro = report["macro avg"] || {};
    const weighted = report["weighted avg"] || {};
    const labels = Array.isArray(report.class_names)
      ? report.class_names.filter((k) => isMetricRow(report[k]))
      : (state.info.classes || []).map((c) => c.label).filter((k) => isMetricRow(report[k]));
    for (const key of Object.keys(report)) {
      if (isMetricRow(report[key]) && !/ avg$/.test(key) && !labels.includes(key)) labels.push(key);
    }
    const support = typeof macro.support === "number" ? macro.support : null;
    $("eval-source").textContent = support ? "Held-out test set, " + support.toLocaleString() + " images" : "";

    const stats = [];
    if (typeof report.accuracy === "number") {
      stats.push(stat("Accuracy", pct(report.accuracy)));
      // A report with fewer numbers (accuracy alone) gets fewer tiles, not tiles of dashes.
      for (const [label, avg] of [["Macro F1", macro], ["Weighted F1", weighted]]) {
        if (!isNumber(avg["f1-score"])) continue;
        const sub = isNumber(avg.precision) && isNumber(avg.recall) ? "P " + pct(avg.precision) + " · R " + pct(avg.recall) : null;
        stats.push(stat(label, pct(avg["f1-score"]), sub));
      }
      if (isNumber(report.top3_accuracy)) stats.push(stat("Top-3 accuracy", pct(report.top3_accuracy)));
    } else {
      // e.g. a bundle of last.pt: the run's report described best.pt, so export left its numbers out.
      $("eval-source").textContent = "No test-set numbers for this model";
    }
    $("report-stats").replaceChildren(...stats);

    const cal = report.calibration;
    $("calibration").hidden = !cal;
    if (cal) {
      const tiles = [];
      if (typeof cal.ece_after === "number") {
        tiles.push(stat("ECE", pct(cal.ece_after), "expected calibration error on the validation split; " + pct(cal.ece_before) + " before"));
      }
      if (typeof cal.nll_after === "number") {
        tiles.push(stat("NLL", fixed(cal.nll_after, 3), "negative log-likelihood on the validation split; " + fixed(cal.nll_before, 3) + " before"));
      }
      // Exported without data (--no-data): T = 1 was never fitted, and the probabilities are the model's own.
      const fitted = cal.skipped === undefined;
      if (typeof cal.temperature === "number") tiles.push(stat("Temperature", fixed(cal.temperature, 3), fitted ? "fitted on the validation split" : "not fitted"));
      $("calibration-stats").replaceChildren(...tiles);
      $("calibration-note").textContent = !fitted
        ? "The probabilities are not calibrated: export had no validation images to fit a temperature on."
        : "Temperature scaling is fitted so that, on the validation split, the shown probabilities come closer to how often the model was right (ECE and NLL above say how close); it does not change the ranking." +
        (!cal.degenerate ? "" : cal.temperature > 1
          ? " Here the fit found no minimum (the model was rarely right on the validation images), so the probabilities " +
            "are flattened towards equal and say little."
          : " Here the fit found no minimum (the validation images were too easy), so the probabilities " +
            "are likely overconfident on new images.") +
        // The fit minimises the NLL, not the ECE: the two can disagree (the demo model's ECE rose 8.3 → 8.8 %).
        (!cal.degenerate && typeof cal.ece_after === "number" && cal.ece_after > cal.ece_before
          ? " Here it did not lower the calibration error on the validation split (ECE " + pct(cal.ece_before) + " → " +
            pct(cal.ece_after) + "): the fit minimises the negative log-likelihood, which it lowered."
          : "") +
        (cal.test && typeof cal.test.ece_after === "number" ? " On the test split, which the fit never saw: ECE " +
          pct(cal.test.ece_before) + " → " + pct(cal.test.ece_after) + ", NLL " + fixed(cal.test.nll_before, 3) + " → " +
          fixed(cal.test.nll_after, 3) + "." : "");
    }

    state.reportRows = labels.map((label, index) => Object.assign({ label: label, name: displayName(label), index: index }, report[label]));
    $("per-class").hidden = !labels.length;
    if (labels.length) renderMetricsTable(report);

    const matrix = report.confusion_matrix;
    const okMatrix = Array.isArray(matrix) && matrix.length && matrix.every((row) => Array.isArray(row) && row.length === matrix.length);
    $("confusion").hidden = !okMatrix;
    if (okMatrix) {
      const names = Array.isArray(report.class_names) && report.class_names.length === matrix.length
        ? report.class_names
        : state.info.classes.map((c) => c.label);
      renderConfusion(matrix, names.length === matrix.length ? names : matrix.map((_, i) => "class " + i));
    }

    const extra = [];
    const flatten = (prefix, value) => {
      if (value && typeof value === "object" && !Array.isArray(value)) {
        for (const [k, v] of Object.entries(value)) flatten(prefix ? prefix + " · " + k : k, v);
      } else if (value !== null && value !== undefined) {
        extra.push([prefix, typeof value === "number" && !Number.isInteger(value) ? value.toPrecision(4) : Array.isArray(value) ? JSON.stringify(value) : String(value)]);
      }
    };
    for (const key of ["parity", "int8"]) if (key in report) flatten(key, report[key]);
    const missing = report.classes_without_images;
    if (Array.isArray(missing) && missing.length) {
      extra.unshift(["Classes without test images", missing.map((label) => displayName(String(label))).join(", ") +
        " (support 0; the macro averages leave out those the model never predicted)"]);
    }
    // Counted by training: byte-identical images, which make the numbers above less to be trusted.
    const copies = report.identical_copies || {};
    const copied = [
      [copies.test_of_train, "test ", " with a copy in the training data: the test numbers overstate"],
      [copies.across_classes, "", " under two or more classes"],
      [copies.val_of_train, "validation ", " with a copy left in training"],
    ].filter(([n]) => isNumber(n) && n > 0);
    if (copied.length) {
      const said = copied.map(([n, kind, what]) => n + " " + kind + (n === 1 ? "image" : "images") + what);
      extra.unshift(["Identical copies in the data", said.join("; ")]);
    }
    $("report-note").hidden = !report.demo_note;
    $("report-note").textContent = report.demo_note ? String(report.demo_note) : "";
    $("extra-report").hidden = !extra.length;
    facts($("extra-facts"), extra);
  }

  const METRIC_COLUMNS = [
    { key: "name", title: "Class", short: "Class", numeric: false },
    { key: "precision", title: "Precision", short: "Prec.", numeric: true },
    { key: "recall", title: "Recall", short: "Recall", numeric: true },
    { key: "f1-score", title: "F1", short: "F1", numeric: true },
    { key: "support", title: "Support", short: "n", name: "Support (n)", numeric: true },
  ];

  function heatCell(value, isScore) {
    const text = isScore ? fixed(value, 3) : typeof value === "number" ? value.toLocaleString() : value;
    const td = el("td", isScore ? "num heat" : "num", text);
    if (isScore && typeof value === "number") {
      // 0.5 or less is the red end, 0.75 neutral, 1.0 the green end; the CSS turns --t into a colour.
      td.style.setProperty("--t", String(Math.max(0, Math.min(1, (value - 0.5) / 0.5))));
    }
    return td;
  }

  function renderMetricsTable(report) {
    const table = $("metrics-table");
    const head = el("tr");
    for (const col of METRIC_COLUMNS) {
      const th = el("th", col.numeric ? "num" : "");
      th.scope = "col";
      // Phones show the short title. The accessible name is the full one and contains what is shown (WCAG 2.5.3,
      // so "click n" works by voice); the header's aria-sort says how the table is sorted (WAI-ARIA sortable table).
      const button = el("button", "sort");
      button.append(el("span", "long", col.title), el("span", "short", col.short));
      button.setAttribute("aria-label", col.name || col.title);
      button.type = "button";
      button.addEventListener("click", () => {
        const same = state.sort.key === col.key;
        state.sort = { key: col.key, descending: same ? !state.sort.descending : col.numeric };
        renderMetricsTable(report);
        table.querySelector('th[data-key="' + col.key + '"] button').focus();
      });
      th.dataset.key = col.key;
      if (state.sort.key === col.key) th.setAttribute("aria-sort", state.sort.descending ? "descending" : "ascending");
      th.append(button);
      head.append(th);
    }
    table.tHead.replaceChildren(head);

    const rows = state.reportRows.slice();
    const { key, descending } = state.sort;
    if (key) {
      rows.sort((a, b) => {
        const x = a[key];
        const y = b[key];
        const order = typeof x === "string" ? x.localeCompare(y) : x - y;
        return descending ? -order : order;
      });
    }
    table.tBodies[0].replaceChildren(
      ...rows.map((row) => {
        const tr = el("tr");
        const th = el("th", null, row.name);
        th.scope = "row";
        if (row.name !== row.label) th.title = row.label;
        tr.append(th, heatCell(row.precision, true), heatCell(row.recall, true), heatCell(row["f1-score"], true), heatCell(row.support, false));
        return tr;
      })
    );

    const foot = [];
    for (const name of ["macro avg", "weighted avg"]) {
      const avg = report[name];
      if (!isMetricRow(avg)) continue;
      const tr = el("tr");
      const th = el("th", null, name === "macro avg" ? "Macro average" : "Weighted average");
      th.scope = "row";
      tr.append(th, heatCell(avg.precision, true), heatCell(avg.recall, true), heatCell(avg["f1-score"], true), heatCell(avg.support, false));
      foot.push(tr);
    }
    if (typeof report.accuracy === "number") {
      const tr = el("tr");
      const th = el("th", null, "Accuracy");
      th.scope = "row";
      const td = heatCell(report.accuracy, true);
      td.colSpan = 3;
      const macro = report["macro avg"] || {};
      tr.append(th, td, heatCell(macro.support, false));
      foot.push(tr);
    }
    table.tFoot.replaceChildren(...foot);
  }

  function renderConfusion(matrix, labels) {
    const table = $("confusion-table");
    const caption = table.caption;
    table.replaceChildren(caption);
    const head = el("thead");
    const tr = el("tr");
    const corner = el("th", "corner");
    corner.append(el("span", null, "True ↓ / Predicted →"));
    tr.append(corner);
    labels.forEach((label) => {
      const th = el("th", "col-head");
      th.scope = "col";
      th.title = displayName(label);
      th.append(el("span", null, displayName(label)));
      tr.append(th);
    });
    tr.append(el("th", "col-head total", "n"));
    head.append(tr);
    const body = el("tbody");
    matrix.forEach((row, i) => {
      const total = row.reduce((a, b) => a + b, 0);
      const r = el("tr");
      const th = el("th", "row-head");
      th.scope = "row";
      th.title = displayName(labels[i]);
      th.append(el("span", null, displayName(labels[i])));
      r.append(th);
      row.forEach((count, j) => {
        const share = total ? count / total : 0;
        const td = el("td", "cm" + (i === j ? " diag" : "") + (count === 0 ? " zero" : ""), count);
        td.style.setProperty("--a", share.toFixed(3));
        td.title = "True " + displayName(labels[i]) + ", predicted " + displayName(labels[j]) + ": " + count + " (" + pct(share) + " of the row)";
        r.append(td);
      });
      r.append(el("td", "num total", total));
      body.append(r);
    });
    table.append(head, body);
  }
})();
