#!/usr/bin/env bash
# Fetch the JavaScript the book would otherwise load from CDNs, so that the built
# HTML works offline (CI has no internet except package registries).
#
#   MathJax 3 .................. typesets $...$ / $$...$$ on every page with math
#   RequireJS + html-manager ... render the saved ipywidgets state on notebook pages
#
# They come from the npm registry (`npm pack`) and land in book/_static/vendor/
# (git-ignored); _config.yml points mathjax_path and nb_ipywidgets_js there.
# Idempotent: if the pinned versions are already in place it exits at once.
#
# Usage: .ci/static_assets.sh [VENDOR_DIR]      (default: <repo>/book/_static/vendor)
#
# It also writes VENDOR_DIR/widgets-glue.js, loaded before the widget manager
# (see the comments inside it for the two problems it works around).
set -euo pipefail

# Pinned versions. html-manager 1.0.x is the line for ipywidgets 8 (widget state
# protocol 2); 1.0.6 is the version MyST-NB 1.x itself loads from the CDN.
MATHJAX_VERSION=3.2.2
REQUIREJS_VERSION=2.3.7
HTML_MANAGER_VERSION=1.0.6

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
vendor_dir="${1:-$repo_root/book/_static/vendor}"
stamp="$vendor_dir/VERSIONS"
wanted="mathjax@$MATHJAX_VERSION requirejs@$REQUIREJS_VERSION @jupyter-widgets/html-manager@$HTML_MANAGER_VERSION"

# The files _config.yml refers to; if any is missing we fetch again.
required_files=(
  "$vendor_dir/mathjax/es5/tex-mml-chtml.js"
  "$vendor_dir/requirejs/require.js"
  "$vendor_dir/html-manager/dist/embed-amd.js"
)

all_present() {
  local f
  for f in "${required_files[@]}"; do [[ -s "$f" ]] || return 1; done
  [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]
}

write_widgets_glue() {
  cat > "$vendor_dir/widgets-glue.js" <<'JS'
// Glue between the ipywidgets HTML manager and this book; written by
// .ci/static_assets.sh and loaded (via nb_ipywidgets_js) before embed-amd.js.
(function () {
  // 1. Each bundle in embed-amd.js finds its font files next to the URL that
  //    RequireJS gives its module name; by default that URL is relative to the
  //    page (e.g. notebooks/@jupyter-widgets/...), where nothing exists. Map the
  //    module names into the copied dist/ folder. RequireJS takes a global
  //    `require` object defined before it loads as its configuration.
  var dist = new URL("html-manager/dist/", document.currentScript.src).href;
  window.require = {
    paths: {
      "@jupyter-widgets/base": dist + "base",
      "@jupyter-widgets/controls": dist + "controls",
      "@jupyter-widgets/html-manager": dist + "html-manager",
      "@jupyter-widgets/html-manager/dist": dist.slice(0, -1),
    },
  };

  // 2. @jupyter-widgets/controls typesets widget labels with the MathJax 2 API,
  //    MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads
  //    MathJax 3, which has no Hub, so every labelled widget threw a TypeError.
  //    Forward those calls to MathJax 3. MathJax (a deferred script) has replaced
  //    its config object by the real one by the time DOMContentLoaded fires.
  document.addEventListener("DOMContentLoaded", function () {
    var mathjax = window.MathJax;
    if (!mathjax || mathjax.Hub || !mathjax.startup || !mathjax.startup.promise) return;
    mathjax.Hub = {
      Queue: function (command) {
        var element = command[2];
        return mathjax.startup.promise.then(function () {
          return mathjax.typesetPromise([element]);
        });
      },
    };
  });
})();
JS
}

if all_present; then
  write_widgets_glue
  echo "static assets: up to date in $vendor_dir ($wanted)"
  exit 0
fi

command -v npm >/dev/null || { echo "static assets: npm not found (apt-get install -y npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# `npm pack` downloads the published tarball without installing dependencies:
# all three packages ship self-contained browser bundles.
unpack() {  # unpack NPM_SPEC DEST -> DEST/package/...
  local spec="$1" dest="$2" tarball
  mkdir -p "$dest"
  tarball="$(cd "$dest" && npm pack --silent "$spec" | tail -n 1)"
  tar -xzf "$dest/$tarball" -C "$dest"
}

unpack "mathjax@$MATHJAX_VERSION" "$work/mathjax"
unpack "requirejs@$REQUIREJS_VERSION" "$work/requirejs"
unpack "@jupyter-widgets/html-manager@$HTML_MANAGER_VERSION" "$work/html-manager"

staging="$work/vendor"
mkdir -p "$staging/mathjax/es5" "$staging/requirejs" "$staging/html-manager/dist"

# MathJax: the combined component Sphinx uses (tex-mml-chtml.js) plus the folders
# it loads from at run time (TeX extensions via autoload, CHTML fonts, the menu
# and its accessibility parts). The other combined bundles (tex-svg.js, ...) are
# alternatives we never load; leaving them out halves the size.
mj="$work/mathjax/package"
cp "$mj/LICENSE" "$staging/mathjax/"
cp "$mj/es5/"{tex-mml-chtml.js,core.js,loader.js,startup.js} "$staging/mathjax/es5/"
cp -r "$mj/es5/"{a11y,adaptors,input,output,sre,ui} "$staging/mathjax/es5/"

cp "$work/requirejs/package/require.js" "$staging/requirejs/"

# html-manager: embed-amd.js finds its font files next to itself; source maps
# and the non-AMD embed.js are not needed.
hm="$work/html-manager/package"
cp "$hm/LICENSE" "$staging/html-manager/" 2>/dev/null || true
find "$hm/dist" -maxdepth 1 -type f ! -name '*.map' ! -name 'embed.js' ! -name 'libembed-amd.js' \
  -exec cp {} "$staging/html-manager/dist/" \;

echo "$wanted" > "$staging/VERSIONS"

# Swap in the new tree only when complete, so an interrupted run never leaves
# a half-filled folder that looks current.
mkdir -p "$(dirname "$vendor_dir")"
rm -rf "$vendor_dir"
mv "$staging" "$vendor_dir"
write_widgets_glue
echo "static assets: fetched $wanted into $vendor_dir ($(du -sh "$vendor_dir" | cut -f1))"
