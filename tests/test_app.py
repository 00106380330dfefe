"""app.py: the Gradio demo, driven in headless Chromium against a tiny model built on the spot, plus its pieces."""

import os
import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image
from test_predict import direct, speaking_model


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="app.py needs gradio (pip install gradio)")

from mblip import app  # noqa: E402


CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
# Without these, Chromium on a closed network stalls on sign-in, component updates and QUIC probes.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
]


def chromedriver() -> str | None:
    return shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()), None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_prompts_follow_task_and_language():
    assert app.make_prompt("Caption", "German") == "Caption the image in German."
    assert (
        app.make_prompt("Question", "French", " How many cats? ") == "Question: How many cats? Short answer in French:"
    )
    assert app.make_prompt("Question", "Hindi", "") == "Question: What is in the image? Short answer in Hindi:"
    assert (
        app.LANGUAGE_CHOICES[0] == "English" and "Swahili" in app.LANGUAGE_CHOICES and len(app.LANGUAGE_CHOICES) == 96
    )


def test_answer_matches_the_model_and_rejects_missing_input(tmp_path):
    model, processor = speaking_model()
    path = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (220, 30, 30)).save(path)
    got = app.answer(model, processor, Image.open(path), "zwei", max_new_tokens=6, num_beams=2)
    assert got and got == direct(model, processor, path, "zwei", max_new_tokens=6, num_beams=2)
    with pytest.raises(gr.Error, match="Upload an image first"):
        app.answer(model, processor, None, "zwei")
    with pytest.raises(gr.Error, match="prompt is empty"):
        app.answer(model, processor, Image.open(path), "  ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "70000"], "--port must be in 1..65535, got 70000"),
        (["--load_in_8bit", "--load_in_4bit"], "--load_in_8bit or --load_in_4bit, not both"),
        ([], "No model at the default outputs/demo/mblip"),
    ],
)
def test_cli_errors_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no demo model here
    with pytest.raises(SystemExit) as exit_info:
        app.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
    if not argv:
        assert "`python train_mblip.py`" in err[0] and "--model" in err[0]


def test_browser_caption_in_german_equals_the_model(tmp_path):
    driver_path = chromedriver()
    if not CHROMIUM.exists() or driver_path is None:
        pytest.skip(
            "headless browser test needs /usr/bin/chromium and chromedriver (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the browser test needs selenium (pip install selenium)"
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    model, processor = speaking_model()
    image_path = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (220, 30, 30)).save(image_path)
    expected = direct(model, processor, image_path, "Caption the image in German.", max_new_tokens=30, num_beams=5)
    other_path = tmp_path / "blue.png"
    Image.new("RGB", (40, 30), (20, 30, 230)).save(other_path)
    # The model answers differently for another image, so the comparison below would notice a wrong or altered upload.
    assert (
        direct(model, processor, other_path, "Caption the image in German.", max_new_tokens=30, num_beams=5) != expected
    )

    demo = app.build_app((model, processor))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True)
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
            options.add_argument(flag)
        # An explicit driver path keeps Selenium Manager from looking for (and downloading) a driver.
        browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
        try:
            wait = WebDriverWait(browser, 60)
            browser.get(f"http://127.0.0.1:{port}/")
            upload = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#image input[type=file]"))
            upload.send_keys(str(image_path))
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#image img"))  # the preview: upload finished

            # Choosing German in the dropdown writes the caption prompt.
            language = browser.find_element(By.CSS_SELECTOR, "#language input")
            language.click()
            language.send_keys(Keys.CONTROL, "a")
            language.send_keys("German")
            option = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "li[role=option][aria-label=German]"))
            option.click()
            prompt = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
            wait.until(lambda b: prompt.get_attribute("value") == "Caption the image in German.")

            browser.find_element(By.ID, "generate").click()
            answer = browser.find_element(By.CSS_SELECTOR, "#answer textarea")
            wait.until(lambda b: answer.get_attribute("value"))
            shown = answer.get_attribute("value")
            ARTIFACTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "app.png"))
        finally:
            browser.quit()
    finally:
        demo.close()
    assert shown == expected and expected
