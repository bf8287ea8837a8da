"""Drives `tinyllama serve`'s chat page in headless Chromium (Debian's chromium + chromedriver,
through selenium) and prints what it saw as one JSON object; tests/webui.rs checks it against the
server's API. Usage: webui_check.py URL SCENARIO [ARG], SCENARIO one of send, stop, xss, apikey,
screenshot (ARG: the PNG to write)."""
import json
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

URL, SCENARIO = sys.argv[1], sys.argv[2]
ARG = sys.argv[3] if len(sys.argv) > 3 else None

opts = Options()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,720", "--disable-dev-shm-usage"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
wait = WebDriverWait(driver, 60)


def health():
    with urllib.request.urlopen(URL + "/health") as r:
        return json.load(r)


def css(sel):
    return driver.find_element(By.CSS_SELECTOR, sel)


def set_field(id_, value):
    el = driver.find_element(By.ID, id_)
    el.clear()
    if value != "":
        el.send_keys(str(value))
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", el)


def ready():
    wait.until(lambda d: d.execute_script("return document.getElementById('model-name').textContent") != "…")


def send(text):
    box = css("textarea#input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    # the reply has started: an assistant element exists
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-role="assistant"]'))


def idle():
    wait.until(lambda d: d.execute_script("return !document.querySelector('[data-action=\"send\"]').disabled"))


def messages():
    return [{"role": e.get_attribute("data-role"), "text": e.get_attribute("textContent")}
            for e in driver.find_elements(By.CSS_SELECTOR, "#messages [data-role]")]


def stored():
    convs = json.loads(driver.execute_script("return localStorage.getItem('tinyllama.conversations')") or "[]")
    cur = driver.execute_script("return localStorage.getItem('tinyllama.current')")
    return next((c["messages"] for c in convs if c["id"] == cur), [])


def dangerous():
    """Elements or effects that untrusted text must never produce."""
    return {
        "elements": driver.execute_script(
            "return Array.from(document.querySelectorAll('#messages img, #messages script, #messages a, #messages iframe, "
            "#messages [onerror], #messages [onclick]')).map(e => e.outerHTML)"),
        "pwned": driver.execute_script("return window.__pwned === undefined ? null : window.__pwned"),
    }


out = {}
try:
    driver.get(URL + "/")
    if SCENARIO == "send":
        ready()
        set_field("temperature", 0)
        set_field("max-tokens", 24)
        send("Hello there")
        idle()
        out["stored"] = stored()
        out["shown"] = messages()
        out["status"] = {k: driver.find_element(By.ID, k).text for k in ["model-name", "context-use", "speed"]}
        driver.refresh()
        ready()
        out["after_reload"] = messages()
        css('[data-action="new-chat"]').click()
        out["after_new_chat"] = messages()
        out["conversations"] = len(driver.find_elements(By.CSS_SELECTOR, "#conversations li"))
    elif SCENARIO == "stop":
        ready()
        set_field("max-tokens", "")
        for how in ["button", "escape"]:
            before = stored()
            send("Tell me a long story")
            wait.until(lambda d: len(stored()) > len(before) + 1 and len(stored()[-1]["content"]) > 0 or len(messages()[-1]["text"]) > 0)
            running = health()["running"]
            if how == "button":
                css('[data-action="stop"]').click()
            else:
                css("textarea#input").send_keys(Keys.ESCAPE)
            idle()
            length = len(stored()[-1]["content"])
            t = time.time()
            while time.time() - t < 10 and health()["running"] > 0:
                time.sleep(0.05)
            time.sleep(0.5)
            out[how] = {"running_while_streaming": running, "running_after": health()["running"],
                        "stopped": stored()[-1].get("stopped", False), "length": length,
                        "length_later": len(stored()[-1]["content"]), "shown": messages()[-1]["text"]}
    elif SCENARIO == "xss":
        ready()
        payload = ('<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> '
                   '[click](javascript:window.__pwned=3) **bold** <b>b</b>')
        set_field("max-tokens", 4)
        send(payload)
        idle()
        out["user_text"] = messages()[0]["text"]
        out["after_send"] = dangerous()
        # an assistant reply holding the same, and a code block: as the page stores a streamed reply
        conv = [{"id": "x1", "title": "t", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": payload + "\n```html\n<script>window.__pwned=4</script>\n```\n- <img src=y onerror=window.__pwned=5>"}]}]
        driver.execute_script("localStorage.setItem('tinyllama.conversations', arguments[0]); localStorage.setItem('tinyllama.current', 'x1')", json.dumps(conv))
        driver.refresh()
        ready()
        time.sleep(0.3)
        out["assistant_text"] = messages()[1]["text"]
        out["code_blocks"] = driver.execute_script("return Array.from(document.querySelectorAll('#messages pre code')).map(e => e.textContent)")
        out["after_reload"] = dangerous()
    elif SCENARIO == "apikey":
        time.sleep(1)
        out["form_shown"] = css("#api-key-form").is_displayed()
        out["error_before"] = css("#error").text
        set_field("api-key", "wrong-key")
        css('[data-action="save-key"]').click()
        time.sleep(0.5)
        out["error_wrong"] = css("#error").text
        set_field("api-key", ARG)
        css('[data-action="save-key"]').click()
        ready()
        out["error_right"] = css("#error").text
        set_field("max-tokens", 8)
        send("Hello")
        idle()
        out["reply"] = stored()[-1]["content"]
        out["error_after"] = css("#error").text
        out["urls"] = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])")
    elif SCENARIO == "screenshot":
        ready()
        set_field("system", "You are a storyteller.")
        set_field("temperature", 0.7)
        set_field("max-tokens", 64)
        send("Tell me about Elizabeth and Mr. Darcy.")
        idle()
        driver.save_screenshot(ARG)
        out["saved"] = ARG
    out["console"] = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
finally:
    driver.quit()
print(json.dumps(out))
