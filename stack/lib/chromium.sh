# Chromium: the headless browser the operations page's screenshot test drives.
# Sourced by stack/stack.sh after common.sh.

chromium_install() {
    command -v chromium >/dev/null ||
        require_debian_package chromium "headless chromium renders the operations page in the screenshot test"
}
