// chatllm's additions to Chainlit's page (custom_js in .chainlit/config.toml).
(() => {
  "use strict";

  // A share link opened before logging in: Chainlit's page sends the visitor to its login
  // page, which after the login always goes to "/" (Chainlit issue #1931). The link is
  // remembered on the login page (it is the referrer) and opened once the login is done.
  const AFTER_LOGIN = "chatllm.after-login";
  const onLogin = () => /\/login(\/callback)?$/.test(location.pathname);
  const shareLink = /\/share\/[A-Za-z0-9-]+$/;

  if (onLogin() && document.referrer) {
    try {
      const from = new URL(document.referrer);
      if (from.origin === location.origin && shareLink.test(from.pathname)) {
        sessionStorage.setItem(AFTER_LOGIN, from.pathname);
      }
    } catch (_) {
      // an unreadable referrer: nothing to remember
    }
  }
  const pending = sessionStorage.getItem(AFTER_LOGIN);
  if (pending && shareLink.test(pending)) {
    let checks = 0;
    const timer = setInterval(() => {
      checks += 1;
      if (!onLogin()) {
        clearInterval(timer);
        sessionStorage.removeItem(AFTER_LOGIN);
        if (location.pathname !== pending) location.replace(pending);
      } else if (checks > 7200) {
        clearInterval(timer); // half an hour on the login page: forgotten
      }
    }, 250);
  } else {
    sessionStorage.removeItem(AFTER_LOGIN);
  }

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
  // files): the share dialog's Unshare button, a dialog's Close (read out by screen
  // readers), and the notice of a link that opens nothing. Put into the browser's
  // language where the app speaks it.
  const chinese = /^zh\b/i.test(navigator.language || "");
  if (chinese) {
    const hant = /^zh-(tw|hk|mo|hant)/i.test(navigator.language);
    const words = new Map([
      ["Unshare", "取消分享"],
      ["Close", hant ? "關閉" : "关闭"],
      ["Failed to load thread: Not Found", hant ? "無法載入對話：找不到，或已停止分享" : "无法加载对话：找不到，或已停止分享"],
    ]);
    const translate = () => {
      for (const node of document.querySelectorAll(
        "[role=dialog] button, [role=dialog] .sr-only, [data-sonner-toast] [data-title]",
      )) {
        const said = words.get(node.textContent.trim());
        if (said && node.children.length === 0) node.textContent = said;
      }
    };
    new MutationObserver(translate).observe(document.documentElement, {
      childList: true,
      subtree: true,
    });
  }
})();
