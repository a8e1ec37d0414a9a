"""Who may call each erp_adapter route."""

from __future__ import annotations

from shared.web import dead_letters
from shared.web.permissions import EVERY_ROLE, Permissions

# Only the integration role feeds master data in; ops may also read what crossed the boundary.
IMPORTERS = frozenset({"integration"})
BOUNDARY_READERS = frozenset({"integration", "ops"})

PERMISSIONS = Permissions("erp_adapter", {
    ("POST", "/imports"): IMPORTERS,
    ("GET", "/imports"): BOUNDARY_READERS,
    ("GET", "/imports/{run_id}"): BOUNDARY_READERS,
    ("GET", "/integration-log"): BOUNDARY_READERS,
    # Who owns which field is a fact every role works by, not a secret.
    ("GET", "/ownership"): EVERY_ROLE,
    # The ERP's own principal sends records in the integration role; a person may too.
    ("POST", "/erp/records"): IMPORTERS,
    ("GET", "/conflicts"): BOUNDARY_READERS,
    ("GET", "/conflicts/{conflict_id}"): BOUNDARY_READERS,
    ("POST", "/conflicts/{conflict_id}/resolve"): IMPORTERS,
    ("GET", "/timeline"): BOUNDARY_READERS,
    ("GET", "/connectors"): BOUNDARY_READERS,
    ("PUT", "/connectors/{name}"): IMPORTERS,
    ("GET", "/confirmations"): BOUNDARY_READERS,
    ("GET", "/confirmations/{confirmation_id}"): BOUNDARY_READERS,
    ("POST", "/confirmations/{confirmation_id}/approve"): IMPORTERS,
    ("POST", "/confirmations/{confirmation_id}/retry"): IMPORTERS,
    ("GET", "/reconciliation"): BOUNDARY_READERS,
    **dead_letters.PERMISSIONS,
})
