"""Template rendering, tested as strings (spec templates.md §2, §4, §5, §8)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cpframe.cli import main
from cpframe.core.errors import TemplateError, UndefinedVariablesError
from cpframe.execution.pipeline import load_pipeline
from cpframe.execution.submission import check_against_pipeline, validate_submission
from cpframe.execution.templates import (
    default_pipelines_dir,
    default_templates_dir,
    make_timestamp,
    render,
    render_template,
    render_text,
)

NOW = dt.datetime(2025, 2, 7, 18, 15, 12, tzinfo=dt.timezone.utc)
P = "LSSTComCam/calib/DM-48520"
T = f"{P}/newCalibs"
BANDS = "ugrizy"


def rt(text: str, env: dict | None = None, **kw) -> dict:
    kw.setdefault("now", NOW)
    return render_text(text, environ=env or {"USER": "op"}, **kw).config


# ------------------------------------------------------------------------------ substitution
def test_environment_forms_and_unset_listed_all_at_once():
    text = 'a: "${ONE}-$TWO"\nb: "${THREE} ${FOUR}"\nc: "{nokey} {other}"\npayload: {payloadName: p}\n'
    assert rt(text, {"ONE": "1", "TWO": "2", "THREE": "3", "FOUR": "4", "USER": "u"}, allow_unset=True)["a"] == "1-2"
    with pytest.raises(UndefinedVariablesError, match=r"<string>: environment variables not set: FOUR .*THREE") as ei:
        rt(text, {"ONE": "1", "TWO": "2"})
    err = ei.value
    assert err.variables == ["FOUR", "THREE"]
    assert err.keys == ["nokey", "other"]
    msg = str(err)
    assert "unknown {key} references: nokey" in msg and "other" in msg
    assert "--var NAME=VALUE" in msg and "templates/README.md" in msg and "--allow-unset" in msg


def test_allow_unset_is_bps_behaviour():
    text = 'a: "${NOPE}/x"\nb: "[{missing}]"\nc: "$ALSO_NOPE"\npayload: {payloadName: p}\n'
    r = render_text(text, environ={"USER": "u"}, allow_unset=True, now=NOW)
    assert r.config["a"] == "${NOPE}/x"      # verbatim, not ""
    assert r.config["b"] == "[]"             # unknown {key} -> ""
    assert r.config["c"] == "$ALSO_NOPE"
    assert set(r.unset) == {"NOPE", "ALSO_NOPE", "{missing}"}


def test_unset_env_text_is_masked_from_key_formatting():
    # ${UNSET} contains braces; they must not be read as a {key}
    text = 'a: "${UNSET}/{b}"\nb: vb\npayload: {payloadName: p}\n'
    assert rt(text, allow_unset=True)["a"] == "${UNSET}/vb"


def test_environment_first_then_keys():
    # the env value itself contains a {key}; BPS formats after expanding the environment
    text = 'a: "${X}"\nb: "from-b"\npayload: {payloadName: p}\n'
    assert rt(text, {"X": "<{b}>", "USER": "u"})["a"] == "<from-b>"


SEARCH = """
computeSite: s1
computeCloud: c9
x: root
use: "{{x}}"
payload:
  payloadName: p
  {payload}
cluster:
  c1:
    pipetasks: t1
    dimensions: exposure
    {cluster}
    use: "{{x}}"
pipetask:
  t1:
    {pipetask}
    use: "{{x}}"
site:
  s1:
    {site}
cloud:
  c9:
    {cloud}
"""


def _search(**levels) -> str:
    fill = {k: levels.get(k, "") for k in ("payload", "cluster", "pipetask", "site", "cloud")}
    for k, v in fill.items():
        if v:
            fill[k] = f"x: {v}"
    return SEARCH.format(**fill)


def test_search_order_root_level_keys():
    # at the root: cmdline > payload > site > cloud > root  (no current cluster/task there)
    assert rt(_search())["use"] == "root"
    assert rt(_search(cloud="cloud"))["use"] == "cloud"
    assert rt(_search(cloud="cloud", site="site"))["use"] == "site"
    assert rt(_search(cloud="cloud", site="site", payload="payload"))["use"] == "payload"
    r = render_text(_search(cloud="cloud", site="site", payload="payload"), {"x": "cmd"},
                    environ={"USER": "u"}, now=NOW).config
    assert r["use"] == "cmd"


def test_search_order_inside_cluster_and_pipetask():
    c = rt(_search(cluster="cl", pipetask="pt", site="site", payload="payload"))
    assert c["cluster"]["c1"]["use"] == "payload"   # payload beats the current cluster
    c = rt(_search(cluster="cl", pipetask="pt", site="site"))
    assert c["cluster"]["c1"]["use"] == "cl"        # current cluster beats site/root
    assert c["pipetask"]["t1"]["use"] == "pt"       # current task beats site/root
    assert c["use"] == "site"                       # at the root no cluster/task is current
    c = rt(_search(pipetask="pt", site="site"))
    assert c["cluster"]["c1"]["use"] == "site"      # t1's section is not current inside c1


def test_computed_values_and_defaults():
    text = 'payload: {payloadName: "LSSTComCam_DM-1_bias"}\nsubmitPath: "/s/{outputRun}"\n'
    c = rt(text, {"USER": "alice"})
    ts = "20250207T181512Z"
    assert make_timestamp(NOW) == ts
    assert c["timestamp"] == ts and c["operator"] == "alice"
    assert c["payload"]["output"] == "u/alice/LSSTComCam_DM-1_bias"
    assert c["payload"]["outputRun"] == f"u/alice/LSSTComCam_DM-1_bias/{ts}"
    assert c["uniqProcName"] == f"u_alice_LSSTComCam_DM-1_bias_{ts}"
    assert c["submitPath"] == f"/s/u/alice/LSSTComCam_DM-1_bias/{ts}"


def test_operator_given_wins_and_timestamp_once():
    text = 'operator: bob\na: "{timestamp}"\nb: "{timestamp}"\npayload: {payloadName: p}\n'
    r = render_text(text, environ={"USER": "alice"})
    assert r.config["operator"] == "bob"
    assert r.config["payload"]["output"] == "u/bob/p"
    assert r.config["a"] == r.config["b"] == r.timestamp
    assert len(r.timestamp) == 16 and r.timestamp.endswith("Z") and r.timestamp[8] == "T"


def test_format_spec_and_skip_names_and_wms():
    text = 'n: 7\na: "run{n:03}"\nb: "{qgraphFile}"\nc: "{wmsJobId}"\npayload: {payloadName: p}\n'
    c = rt(text)
    assert c["a"] == "run007" and c["b"] == "{qgraphFile}" and c["c"] == "<WMS:jobId>"


def test_lazy_order_does_not_matter():
    text = 'payload: {payloadName: p, outputRun: "{bRun}"}\nbRun: "{bColl}/run${N}"\nbColl: "x/y"\n'
    assert rt(text, {"N": "3", "USER": "u"})["payload"]["outputRun"] == "x/y/run3"


def test_cycle_is_an_error_even_with_allow_unset():
    text = 'a: "{b}"\nb: "{c}"\nc: "x{a}"\npayload: {payloadName: p}\n'
    with pytest.raises(TemplateError, match=r"cycle: \{a\} -> \{b\} -> \{c\} -> \{a\}"):
        rt(text, allow_unset=True)


def test_var_sets_environment_and_overrides_keys():
    text = 'a: "${RERUN}"\npayload: {payloadName: p, output: "o/${RERUN}"}\n'
    c = render_text(text, {"RERUN": "20250101a", "output": "mine/chain"}, environ={"USER": "u"}, now=NOW).config
    assert c["a"] == "20250101a"
    assert c["payload"]["output"] == "mine/chain"
    assert c["payload"]["outputRun"] == "mine/chain/20250207T181512Z"


# ------------------------------------------------------------------------------ Jinja + sandbox
def test_jinja_sees_environment():
    text = ("{% for b in BANDS.split() %}flat_{{ b }}: \"${X}-{{ b }}\"\n{% endfor %}"
            "payload: {payloadName: p}\n")
    c = rt(text, {"BANDS": "g r", "X": "x", "USER": "u"})
    assert c["flat_g"] == "x-g" and c["flat_r"] == "x-r"


def test_jinja_undefined_names_join_the_single_error():
    text = 'a: "{{ JINJA_ONLY }}"\nb: "${ENV_ONLY}"\npayload: {payloadName: p}\n'
    with pytest.raises(UndefinedVariablesError) as ei:
        rt(text)
    assert ei.value.variables == ["ENV_ONLY", "JINJA_ONLY"]


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ range.__init__.__globals__ }}",
    "{{ env.__class__ }}",
    "{{ [].append(1) }}",
])
def test_sandbox_refuses_attribute_tricks(attack):
    with pytest.raises(TemplateError, match="sandbox refuses"):
        rt(f'a: "{attack}"\npayload: {{payloadName: p}}\n', {"USER": "u"}, allow_unset=True)


@pytest.mark.parametrize("stmt", ["{% include '/etc/passwd' %}", "{% import 'x.j2' as x %}",
                                  "{% extends '/etc/hostname' %}"])
def test_sandbox_refuses_file_access(stmt):
    with pytest.raises(TemplateError, match="not allowed .*cannot read files"):
        rt(f"{stmt}\npayload: {{payloadName: p}}\n")


@pytest.mark.parametrize("expr", ["{{ 1 // 0 }}", "{{ range(10**9) | list }}", "{{ 'a' + 1 }}"])
def test_failing_jinja_expressions_are_template_errors(expr):
    with pytest.raises(TemplateError, match="a Jinja expression failed|template expression refused"):
        rt(f'a: "{expr}"\npayload: {{payloadName: p}}\n')


def test_bad_yaml_names_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("a: 1\nb: [unclosed\nc: 3\n")
    with pytest.raises(TemplateError, match=r"bad.yaml, line \d+: not valid YAML"):
        render(f, environ={})


# ------------------------------------------------------------------------------ includeConfigs
def test_include_configs_merged_under_the_file(tmp_path):
    (tmp_path / "common.yaml").write_text('requestMemory: 1024\nenvironment: {A: "1", B: "${BVAL}"}\nx: base\n')
    (tmp_path / "more.yaml").write_text("x: more\nrequestCpus: 2\n")
    main_t = tmp_path / "t.yaml"
    main_t.write_text('includeConfigs: [common.yaml, "${INC_DIR}/more.yaml"]\nenvironment: {B: top}\n'
                      'payload: {payloadName: p}\n')
    r = render(main_t, environ={"USER": "u", "BVAL": "b", "INC_DIR": str(tmp_path)}, now=NOW)
    c = r.config
    assert c["requestMemory"] == 1024 and c["requestCpus"] == 2
    assert c["x"] == "more"                               # later include wins
    assert c["environment"] == {"A": "1", "B": "top"}     # the including file wins, deep merge
    assert c["includeConfigs"] == [str(tmp_path / "common.yaml"), str(tmp_path / "more.yaml")]


def test_include_cycle_and_missing(tmp_path):
    (tmp_path / "a.yaml").write_text("includeConfigs: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("includeConfigs: [a.yaml]\n")
    with pytest.raises(TemplateError, match="includeConfigs form a cycle"):
        render(tmp_path / "a.yaml", environ={})
    (tmp_path / "c.yaml").write_text("includeConfigs: [nothere.yaml]\n")
    with pytest.raises(TemplateError, match="nothere.yaml' not found"):
        render(tmp_path / "c.yaml", environ={})


# ------------------------------------------------------------------------------ shipped templates
def _shipped():
    return sorted(p.stem for p in default_templates_dir().glob("bps_*.yaml"))


def test_every_step_has_a_template():
    names = set(_shipped())
    want = {"bps_biasBootstrap", "bps_darkBootstrap", "bps_flatBootstrap", "bps_defects", "bps_ptc", "bps_bias",
            "bps_dark", "bps_verify_bias", "bps_verify_dark", "bps_verify_defects", "bps_verify_ptc",
            "bps_verify_science"}
    want |= {f"bps_flat_{b}" for b in BANDS} | {f"bps_verify_flat_{b}" for b in BANDS}
    assert want <= names


@pytest.mark.parametrize("name", _shipped())
def test_shipped_template_renders_validates_and_matches_pipeline(name, dmtn222_variables):
    r = render(name, environ=dmtn222_variables, now=NOW)
    sub = validate_submission(r.config, r.path)
    pipe = load_pipeline(sub.pipeline_yaml)
    check_against_pipeline(sub, pipe)
    assert Path(sub.pipeline_yaml).parent == default_pipelines_dir()
    assert sub.payload_name.startswith("LSSTComCam_DM-48520_")
    assert sub.butler_config == "/repo/main"
    assert sub.project == sub.campaign == "DM-48520"
    assert "${" not in json.dumps(r.config)


def _sub(name, env):
    r = render(name, environ=env, now=NOW)
    return validate_submission(r.config, r.path)


def test_collection_names_follow_dmtn222(dmtn222_variables):
    env = dmtn222_variables
    ts = "20250207T181512Z"
    std = (P, "LSSTComCam/raw/all", "LSSTComCam/calib/DM-46562", "LSSTComCam/calib/curated/20241101")
    bias = _sub("bps_bias", env)
    assert bias.output == f"{T}/biasGen.20250207a"
    assert bias.output_run == f"{T}/biasGen.20250207a/{ts}"
    assert bias.in_collections == std
    assert bias.data_query == env["SELECTION_BIAS"]
    assert bias.submit_path == f"/scratch/calib/submit/{T}/biasGen.20250207a/{ts}"
    assert bias.uniq_proc_name == f"{T}/biasGen.20250207a/{ts}".replace("/", "_")

    bb = _sub("bps_biasBootstrap", env)
    assert bb.output == f"{T}/biasBootstrapGen.20250207a"
    assert bb.output_run == f"{T}/biasBootstrapGen.20250207a/run1"
    assert bb.in_collections == std[1:]
    db = _sub("bps_darkBootstrap", env)
    assert db.output_run == f"{T}/darkBootstrapGen.20250207a/run1"
    assert db.in_collections == (f"{T}/biasBootstrapGen.20250207a/run1", *std[1:])
    fb = _sub("bps_flatBootstrap", env)
    assert fb.in_collections[:2] == (f"{T}/biasBootstrapGen.20250207a/run1", f"{T}/darkBootstrapGen.20250207a/run1")
    de = _sub("bps_defects", env)
    assert de.output == f"{T}/defectGen.20250207a"
    assert de.in_collections[:3] == tuple(f"{T}/{k}BootstrapGen.20250207a/run1" for k in ("bias", "dark", "flat"))
    assert de.data_query == "instrument='LSSTComCam'"
    assert _sub("bps_ptc", env).output == f"{T}/ptcGen.20250207a"
    dark = _sub("bps_dark", env)
    assert dark.output == f"{T}/darkGen.20250207a"
    assert {c.pipetasks for c in dark.clusters} == {("cpDarkIsr",), ("cpDark",)}
    for b in BANDS:
        f = _sub(f"bps_flat_{b}", env)
        assert f.output == f"{T}/flatGen-{b}.20250207a"
        assert f.data_query == f"{env[f'SELECTION_FLAT_{b}']} and band='{b}'"
        assert f.clusters[0].pipetasks == ("cpFlatIsr", "cpFlatMeasure")
        assert f.clusters[0].dimensions == ("detector",)
        v = _sub(f"bps_verify_flat_{b}", env)
        assert v.output == f"{T}/verifyFlat-{b}.20250210a"
        assert v.data_query.endswith(f" and band='{b}'")
    for kind in ("Bias", "Dark", "Defects", "Ptc", "Science"):
        v = _sub(f"bps_verify_{kind.lower()}", env)
        assert v.output == f"{T}/verify{kind}.20250210a"
        assert v.in_collections == std
    assert "submitPath" not in yaml.safe_load((default_templates_dir() / "bps_verify_defects.yaml").read_text())


def test_user_calib_prefix_and_missing_variables(dmtn222_variables):
    env = {**dmtn222_variables, "USER_CALIB_PREFIX": "u/erykoff/"}
    assert _sub("bps_bias", env).output == f"u/erykoff/{T}/biasGen.20250207a"
    del env["SELECTION_BIAS"], env["SCRATCH"]
    with pytest.raises(UndefinedVariablesError, match="bps_bias.yaml: environment variables not set: "
                                                      r"SCRATCH \(in submitPath\); SELECTION_BIAS"):
        render("bps_bias", environ=env)


CP_PIPE_SKELETON = """\
pipelineYaml: "${CP_PIPE_DIR}/pipelines/${INSTRUMENT}/cpBias.yaml"
project: "${TICKET}"
campaign: "${TICKET}"
submitPath: "${SCRATCH}/submit/{outputRun}"
clusterAlgorithm: lsst.ctrl.bps.quantum_clustering_funcs.dimension_clustering
cluster:
  cpBiasIsrByExposure:
    pipetasks: cpBiasIsr
    dimensions: exposure
payload:
  payloadName: "${INSTRUMENT}_${TICKET}_bias"
  output: "${USER_CALIB_PREFIX}${INSTRUMENT}/calib/${TICKET}/${TAG}/biasGen.${RERUN}"
  butlerConfig: "${REPO}"
  inCollection: "${USER_CALIB_PREFIX}${INSTRUMENT}/calib/${TICKET},${RAW_COLLECTION},${CALIB_COLLECTIONS}"
  dataQuery: "${SELECTION_BIAS}"
"""


def test_real_cp_pipe_template_works_with_only_the_pipeline_path_mapped(tmp_path, dmtn222_variables):
    f = tmp_path / "bps_bias.yaml"
    f.write_text(CP_PIPE_SKELETON)
    r = render(f, environ=dmtn222_variables, now=NOW)
    sub = validate_submission(r.config, r.path)
    assert sub.pipeline_yaml == str(default_pipelines_dir() / "cpBias.yaml")
    assert any("CP_PIPE_DIR" in n for n in r.notes)
    check_against_pipeline(sub, load_pipeline(sub.pipeline_yaml))
    assert sub.output == f"{T}/biasGen.20250207a"
    # the same file with a cp_verify path, and with CP_PIPE_DIR set (then used as given)
    f.write_text(CP_PIPE_SKELETON.replace("${CP_PIPE_DIR}/pipelines/${INSTRUMENT}/cpBias.yaml",
                                          "${CP_VERIFY_DIR}/pipelines/LSSTComCam/verifyBias.yaml"))
    assert render_template(f, environ=dmtn222_variables)["pipelineYaml"] == str(
        default_pipelines_dir() / "verifyBias.yaml")
    f.write_text(CP_PIPE_SKELETON)
    got = render_template(f, environ={**dmtn222_variables, "CP_PIPE_DIR": "/opt/cp_pipe"})
    assert got["pipelineYaml"] == "/opt/cp_pipe/pipelines/LSSTComCam/cpBias.yaml"


def test_cpframe_pipelines_variable(tmp_path, dmtn222_variables):
    got = render_template("bps_bias", environ={**dmtn222_variables, "CPFRAME_PIPELINES": str(tmp_path)})
    assert got["pipelineYaml"] == f"{tmp_path}/cpBias.yaml"


def test_unknown_template_lists_shipped():
    with pytest.raises(TemplateError, match="not found.*bps_flat_g"):
        render("bps_nothing", environ={})


# ------------------------------------------------------------------------------ CLI
def test_cli_render_yaml_json_and_errors(dmtn222_variables, monkeypatch):
    for k in list(dmtn222_variables):
        monkeypatch.delenv(k, raising=False)
    runner = CliRunner()
    res = runner.invoke(main, ["render", "bps_flat_g"])
    assert res.exit_code == 4
    assert "environment variables not set" in res.output and "SELECTION_FLAT_g" in res.output
    assert "Traceback" not in res.output
    for k, v in dmtn222_variables.items():
        monkeypatch.setenv(k, v)
    res = runner.invoke(main, ["render", "bps_flat_g", "--var", "RERUN=20250301b"])
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(res.stdout)
    assert doc["payload"]["output"] == f"{T}/flatGen-g.20250301b"
    assert doc["payload"]["outputRun"] == f"{T}/flatGen-g.20250301b/{doc['timestamp']}"
    assert "renders and validates" in res.stderr
    res = runner.invoke(main, ["render", "bps_bias", "--format", "json"])
    assert json.loads(res.stdout)["payload"]["dataQuery"] == dmtn222_variables["SELECTION_BIAS"]
    res = runner.invoke(main, ["render", "bps_bias", "--var", "NOEQUALS"])
    assert res.exit_code == 2 and "is not NAME=VALUE" in res.output
    monkeypatch.delenv("REPO")
    res = runner.invoke(main, ["render", "bps_bias", "--allow-unset"])
    assert res.exit_code == 0 and yaml.safe_load(res.stdout)["payload"]["butlerConfig"] == "${REPO}"
    assert "left unresolved" in res.stderr


def test_command_line_payload_key_sets_payload_even_when_template_leaves_it_default(dmtn222_variables):
    # bps_bias.yaml sets no outputRun: --var outputRun=... must still set it (BPS --output-run),
    # and submitPath / uniqProcName follow it.
    r = render("bps_bias", {"outputRun": "u/me/bias/run7"}, environ=dmtn222_variables, now=NOW)
    assert r.config["payload"]["outputRun"] == "u/me/bias/run7"
    assert r.config["submitPath"].endswith("/submit/u/me/bias/run7")
    assert r.config["uniqProcName"] == "u_me_bias_run7"
