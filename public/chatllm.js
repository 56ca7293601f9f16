// chatllm's additions to Chainlit's page (custom_js in .chainlit/config.toml).
(() => {
  "use strict";

  // Under Chainlit's --root-path its routes are below that path, which the page names.
  const root = (document.querySelector('meta[property="og:root_path"]')?.content || "")
    .replace(/\/$/, "");

  // A share or thread link opened before logging in (or, in local mode, before the page
  // has its cookie): Chainlit's page sends the visitor to its login page, which after the
  // login always goes to "/" (Chainlit issue #1931): a thread link ended on a new chat.
  // The link is remembered on the login page (it is the referrer) and opened once the
  // login is done. It is forgotten only once that page is open: Chainlit's page can go
  // through its login page twice (at "/", before it has read the new user, it sends the
  // page back to /login, whose referrer is then "/"), and a link forgotten on the way
  // was lost (CI, stop 32).
  const AFTER_LOGIN = "chatllm.after-login";
  const REMEMBERED_FOR = 30 * 60 * 1000; // half an hour on the login page: forgotten
  const onLogin = () => /\/login(\/callback)?$/.test(location.pathname);
  const shareLink = /\/share\/[A-Za-z0-9-]+$/;
  const afterLogin = /\/(share|thread)\/[A-Za-z0-9-]+$/;
  const remembered = () => {
    try {
      const link = JSON.parse(sessionStorage.getItem(AFTER_LOGIN) || "null");
      if (link && afterLogin.test(link.path) && Date.now() - link.at < REMEMBERED_FOR) {
        return link;
      }
    } catch (_) {
      // an unreadable entry: forgotten below
    }
    sessionStorage.removeItem(AFTER_LOGIN);
    return null;
  };

  if (onLogin() && document.referrer) {
    try {
      const from = new URL(document.referrer);
      if (from.origin === location.origin && afterLogin.test(from.pathname)) {
        const link = { path: from.pathname, at: Date.now(), opened: 0 };
        sessionStorage.setItem(AFTER_LOGIN, JSON.stringify(link));
      }
    } catch (_) {
      // an unreadable referrer: nothing to remember
    }
  }
  const pending = remembered();
  if (pending && location.pathname === pending.path) {
    sessionStorage.removeItem(AFTER_LOGIN); // arrived
  } else if (pending && pending.opened >= 3) {
    sessionStorage.removeItem(AFTER_LOGIN); // it never opened: not tried for ever
  } else if (pending) {
    const timer = setInterval(() => {
      if (!remembered()) {
        clearInterval(timer);
      } else if (!onLogin()) {
        clearInterval(timer);
        pending.opened += 1;
        sessionStorage.setItem(AFTER_LOGIN, JSON.stringify(pending));
        location.replace(pending.path);
      }
    }, 250);
  }

  // A request the app refuses (a rename to blanks, say) is told twice by Chainlit's page:
  // its API client's toast says "Bad Request: <the app's words>", and the action's own
  // toast "Bad Request" alone: HTTP's English status, whatever the page's language. The
  // app's words (in the user's language) are what a person needs: the status before them
  // goes, and the toast that holds nothing but the status is hidden.
  const refusals = new Map(); // HTTP status text → the app's words, for a few seconds
  const noteRefusal = async (answer) => {
    const body = await answer.clone().json().catch(() => null);
    if (answer.statusText && body && typeof body.detail === "string" && body.detail) {
      refusals.set(answer.statusText, body.detail);
      setTimeout(() => refusals.delete(answer.statusText), 10000);
    }
  };
  const tidyToast = (toast) => {
    const title = toast.querySelector("[data-title]") || toast; // the action's: bare
    const text = title.textContent.trim();
    for (const [status, words] of refusals) {
      if (text === status) {
        toast.style.display = "none";
      } else if (text === `${status}: ${words}`) {
        const walker = document.createTreeWalker(title, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
          if (node.nodeValue.startsWith(`${status}: `)) {
            node.nodeValue = node.nodeValue.slice(status.length + 2);
          }
        }
      }
    }
  };
  new MutationObserver((records) => {
    if (!refusals.size) return; // nothing refused lately: nothing to look at
    for (const record of records) {
      const target = record.target instanceof Element ? record.target : null;
      const toast = target && target.closest("[data-sonner-toast]");
      if (toast) tidyToast(toast);
      for (const added of record.addedNodes) {
        if (!(added instanceof Element)) continue;
        if (added.matches("[data-sonner-toast]")) tidyToast(added);
        added.querySelectorAll("[data-sonner-toast]").forEach(tidyToast);
      }
    }
  }).observe(document.documentElement, { childList: true, subtree: true });

  // Deleting the thread that is open: Chainlit's page goes to a new chat when it knows
  // the thread is the open one, but it once stayed on it, its messages shown, and the
  // next message went into the deleted thread. If the page still shows the deleted
  // thread once Chainlit's notice has been seen, it goes to a new chat.
  const send = window.fetch;
  window.fetch = async function (input, init) {
    const answer = await send.apply(this, arguments);
    try {
      const url = new URL(typeof input === "string" ? input : input.url, location.href);
      const method = ((init && init.method) || "GET").toUpperCase();
      if (answer.status >= 400 && answer.status < 500 && url.origin === location.origin) {
        await noteRefusal(answer);
      }
      if (answer.ok && method === "DELETE" && url.pathname === `${root}/project/thread`) {
        const deleted = JSON.parse((init && init.body) || "{}").threadId;
        const showing = () => {
          const open = location.pathname.match(/\/thread\/([A-Za-z0-9-]+)$/);
          return deleted && open && open[1] === deleted;
        };
        if (showing()) {
          setTimeout(() => showing() && location.assign(`${root}/`), 2000);
        }
      }
    } catch (_) {
      // not a request this cares about
    }
    return answer;
  };

  // A shared thread is read-only: the page says which view it is, for chatllm.css.
  const mark = () => {
    document.documentElement.toggleAttribute(
      "data-chatllm-shared",
      shareLink.test(location.pathname),
    );
  };
  mark();
  for (const name of ["pushState", "replaceState"]) {
    const original = history[name];
    history[name] = function (...args) {
      const result = original.apply(this, args);
      mark();
      return result;
    };
  }
  addEventListener("popstate", mark);

  // Words Chainlit's page writes in English whatever the language (not in its translation
  // files): the share dialog's Unshare button, a dialog's Close, the theme and sidebar
  // buttons' names, the toasts' region's name, the authors' pictures' alternative texts
  // (read out by screen readers), the notices of a link that opens nothing and of a
  // thread that cannot be resumed. Put into the browser's language where the app speaks it.
  const chinese = /^zh\b/i.test(navigator.language || "");
  if (chinese) {
    const hant = /^zh-(tw|hk|mo|hant)/i.test(navigator.language);
    const words = new Map([
      ["Unshare", "取消分享"],
      ["Close", hant ? "關閉" : "关闭"],
      ["Failed to load thread: Not Found", hant ? "無法載入對話：找不到，或已停止分享" : "无法加载对话：找不到，或已停止分享"],
      ["Couldn't resume chat", hant ? "無法繼續這段對話" : "无法继续这段对话"],
      ["Couldn't resume chat: Thread not found.", hant ? "無法繼續這段對話：找不到它" : "无法继续这段对话：找不到它"],
      ["Toggle theme", hant ? "切換主題" : "切换主题"],
      ["Toggle Sidebar", hant ? "切換側邊欄" : "切换侧边栏"],
      ["Notifications alt+T", "通知 Alt+T"], // the toasts' region, and its key
    ]);
    const translate = () => {
      for (const node of document.querySelectorAll(
        "[role=dialog] button, [role=dialog] .sr-only, [data-sonner-toast] [data-title], button .sr-only",
      )) {
        const said = words.get(node.textContent.trim());
        if (said && node.children.length === 0) node.textContent = said;
      }
      for (const node of document.querySelectorAll('img[alt^="Avatar for "]')) {
        const who = node.getAttribute("alt").slice("Avatar for ".length);
        node.setAttribute("alt", hant ? `${who} 的頭像` : `${who} 的头像`);
      }
      for (const node of document.querySelectorAll("[aria-label], [title]")) {
        for (const attribute of ["aria-label", "title"]) {
          const said = words.get(node.getAttribute(attribute) || "");
          if (said) node.setAttribute(attribute, said);
        }
      }
    };
    new MutationObserver(translate).observe(document.documentElement, {
      childList: true,
      subtree: true,
    });
  }

  // Names for what Chainlit's page leaves unnamed (axe-core's checks in the browser
  // tests): its icon buttons, whose words are only in a tooltip shown on hover; the
  // settings sliders, whose label is not tied to them; a thread's menu trigger (a div
  // with a button's ARIA attributes); the profile's picture; the sidebar's list of
  // threads (a <ul> holding divs). The words come from Chainlit's own translations, in
  // the page's language.
  const BUTTONS = [
    ["#search-chats-button", "threadHistory.sidebar.filters.search"],
    ["#new-chat-button", "navigation.newChat.button"],
    ["#chat-settings-open-modal", "chat.settings.title"],
    ["#chat-submit", "chat.input.actions.send"],
    ["#stop-button", "chat.input.actions.stop"],
    ["button:has(> svg.lucide-copy), button:has(> svg.lucide-check)", "chat.messages.actions.copy.button"],
    ["button:has(> svg.lucide-thumbs-up)", "chat.messages.feedback.positive"],
    ["button:has(> svg.lucide-thumbs-down)", "chat.messages.feedback.negative"],
    ["#header button:has(svg.lucide-share2)", "threadHistory.thread.menu.share"],
  ];
  const lang = (navigator.language || "en").toLowerCase();
  const own = (english, traditional, simplified) => // words Chainlit has none for
    !lang.startsWith("zh") ? english : /^zh-(tw|hk|mo|hant)/.test(lang) ? traditional : simplified;
  const THREAD_OPTIONS = own("Thread options", "對話選項", "对话选项");
  const SCROLL_DOWN = own("Scroll to the latest message", "捲動到最新訊息", "滚动到最新消息");
  let words = null;
  const say = (key) => key.split(".").reduce((node, part) => node && node[part], words);
  const unnamed = (node) =>
    !node.getAttribute("aria-label") &&
    !node.getAttribute("aria-labelledby") &&
    !node.textContent.trim();
  const name = () => {
    if (!words) return;
    for (const [selector, key] of BUTTONS) {
      const label = say(key);
      if (typeof label !== "string") continue;
      for (const node of document.querySelectorAll(selector)) {
        if (unnamed(node)) node.setAttribute("aria-label", label);
      }
    }
    const sidebar = document.querySelector("#sidebar-trigger-button");
    if (sidebar) {
      const open = document.querySelector('[data-state="expanded"][data-sidebar], .group[data-state="expanded"]');
      const label = say(open ? "threadHistory.sidebar.actions.close" : "threadHistory.sidebar.actions.open");
      if (typeof label === "string" && sidebar.getAttribute("aria-label") !== label) {
        sidebar.setAttribute("aria-label", label);
      }
    }
    for (const thumb of document.querySelectorAll("[role=slider]:not([aria-label])")) {
      const widget = thumb.closest("[id]");
      const label = widget && document.querySelector(`label[for="${CSS.escape(widget.id)}"]`);
      if (label && label.textContent.trim()) {
        thumb.setAttribute("aria-label", label.textContent.trim());
      }
    }
    for (const down of document.querySelectorAll("button:has(> svg.lucide-arrow-down)")) {
      if (unnamed(down)) down.setAttribute("aria-label", SCROLL_DOWN);
    }
    for (const menu of document.querySelectorAll("#thread-options:not([role])")) {
      menu.setAttribute("role", "button");
      menu.setAttribute("aria-label", THREAD_OPTIONS);
    }
    for (const picture of document.querySelectorAll('img:not([alt])[src$="/public/favicon.svg"]')) {
      picture.setAttribute("alt", ""); // beside the profile's name: decorative
    }
    for (const list of document.querySelectorAll('ul[data-sidebar="menu"]:not([role])')) {
      if ([...list.children].some((child) => child.tagName !== "LI")) {
        list.setAttribute("role", "none");
      }
    }
  };
  // The page's language is the browser's, as Chainlit's words are (its page says "en"
  // whatever they are); a level-one heading names the app for those who navigate by them.
  document.documentElement.lang = navigator.language || "en";
  if (!document.querySelector("h1")) {
    const heading = document.createElement("h1");
    heading.className = "sr-only"; // Tailwind's: read out, not shown
    heading.textContent = document.title || "chatllm";
    document.body.prepend(heading);
  }

  fetch(`${root}/project/translations?language=${encodeURIComponent(navigator.language || "en-US")}`)
    .then((answer) => (answer.ok ? answer.json() : null))
    .then((body) => {
      words = body && body.translation;
      name();
      new MutationObserver(name).observe(document.documentElement, {
        childList: true,
        subtree: true,
      });
    })
    .catch(() => {}); // unnamed, as Chainlit leaves them
})();
