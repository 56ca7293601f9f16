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
})();
