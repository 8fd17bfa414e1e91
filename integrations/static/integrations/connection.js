/* The connection page: the resync progress refreshes itself while a resync runs, and the IAM policy has a copy button.
   No framework, no network but the progress URL of this very page. */
(function () {
    "use strict";

    function pollProgress(element) {
        var url = element.getAttribute("data-url");
        var text = element.querySelector(".progress-text");
        var bar = element.querySelector("progress");
        function refresh() {
            fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
                .then(function (response) {
                    if (!response.ok) {
                        throw new Error("HTTP " + response.status);
                    }
                    return response.json();
                })
                .then(function (progress) {
                    element.setAttribute("data-state", progress.state);
                    text.textContent = progress.text;
                    if (bar) {
                        var planned = Math.max(progress.sent + progress.remaining, 1);
                        bar.max = planned;
                        bar.value = progress.sent;
                    }
                    if (progress.state === "running") {
                        window.setTimeout(refresh, 2000);
                    }
                })
                .catch(function () {
                    window.setTimeout(refresh, 5000);
                });
        }
        if (element.getAttribute("data-state") === "running") {
            window.setTimeout(refresh, 1000);
        }
    }

    function copyText(button) {
        var target = document.getElementById(button.getAttribute("data-copy-target"));
        var done = function () {
            button.textContent = "Copied";
            window.setTimeout(function () { button.textContent = "Copy"; }, 2000);
        };
        if (navigator.clipboard && window.isSecureContext) {
            navigator.clipboard.writeText(target.textContent).then(done, function () { selectAndCopy(target, done); });
        } else {
            selectAndCopy(target, done);
        }
    }

    function selectAndCopy(target, done) {
        var range = document.createRange();
        range.selectNodeContents(target);
        var selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        if (document.execCommand("copy")) {
            done();
        }
    }

    document.addEventListener("DOMContentLoaded", function () {
        var progress = document.getElementById("resync-progress");
        if (progress) {
            pollProgress(progress);
        }
        document.querySelectorAll("button.copy-button").forEach(function (button) {
            button.addEventListener("click", function () { copyText(button); });
        });
    });
})();
