"""The container module's DOCUMENTATION and argument_spec come from one options table.

hack/gen_container_docs.py writes the documented options from
_options.OPTIONS; this test fails when someone edits one without the other.
"""

import importlib

import yaml

from ansible_collections.intermodal.containers.plugins.module_utils._options import OPTIONS

container = importlib.import_module("ansible_collections.intermodal.containers.plugins.modules.container")


def _docs():
    """The module's options merged with those of its doc fragments, as ansible-doc shows them."""
    doc = yaml.safe_load(container.DOCUMENTATION)
    options = dict(doc["options"])
    for fragment in doc.get("extends_documentation_fragment", []):
        name = fragment.rsplit(".", 1)[1]
        module = importlib.import_module("ansible_collections.intermodal.containers.plugins.doc_fragments." + name)
        options.update(yaml.safe_load(module.ModuleDocFragment.DOCUMENTATION).get("options") or {})
    return options


def test_every_table_option_is_documented_with_its_spec():
    docs = _docs()
    for option in OPTIONS:
        assert option.name in docs, "%s is in the table but not documented: run hack/gen_container_docs.py" % option.name
        doc = docs[option.name]
        for key in ("type", "elements", "choices", "default"):
            assert doc.get(key) == option.spec.get(key), (option.name, key)
        assert option.doc.strip() and doc["description"]
        if "options" in option.spec:
            assert set(doc["suboptions"]) == set(option.spec["options"]), option.name


def test_documented_options_match_the_argument_spec():
    docs = _docs()
    spec = container.argument_spec()
    assert set(docs) == set(spec), set(docs) ^ set(spec)
    for name, entry in spec.items():
        assert docs[name].get("type", "str") == entry.get("type", "str"), name
        assert docs[name].get("default") == entry.get("default"), name
        assert docs[name].get("choices") == entry.get("choices"), name
        assert bool(docs[name].get("required")) == bool(entry.get("required")), name
