#!/usr/bin/env bash
# Installs the Node.js subscriber's one dependency (zeromq@6, pinned in package-lock.json) into
# tests/node/node_modules for tests/test_node_subscriber.py. Called by .ci/run; safe to rerun: it
# does nothing when node_modules was installed from the same lock file by the same node.
#
# zeromq@6 ships prebuilt addons (linux x64/arm64 glibc and musl, macOS, Windows) in its npm
# tarball, so nothing is compiled. Its install script only tries to load one and, if none loads,
# starts a source build (cmake, ninja, vcpkg, network access); --ignore-scripts skips that and the
# load check below fails clearly instead.
set -euo pipefail
cd "$(dirname "$0")"

die() {
    echo "tests/node/install.sh: error: $*" >&2
    exit 1
}

command -v node >/dev/null 2>&1 || die "node not found; expected Node.js >= 18 on PATH (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm not found; expected npm beside node $(node --version) (Debian: apt-get install npm)"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || die "expected Node.js >= 18, found $(node --version); install a newer node"

stamp=node_modules/.autotimm-install
want="node $(node --version) $(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "tests/node: node_modules is up to date"
    exit 0
fi

start=$SECONDS
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
node --input-type=module -e 'import { Subscriber } from "zeromq"; new Subscriber().close()' ||
    die "no prebuilt zeromq addon loads with node $(node --version) on $(uname -sm); building one from source needs cmake, ninja and a C++ toolchain: cd tests/node && npm rebuild zeromq --build-from-source"
echo "$want" >"$stamp"
echo "tests/node: installed zeromq $(node -p 'require("zeromq/package.json").version') in $((SECONDS - start)) s"
