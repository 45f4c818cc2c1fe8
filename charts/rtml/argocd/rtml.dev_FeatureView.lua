-- Argo CD health check for rtml.dev/FeatureView: the argocd-cm key
-- resource.customizations.health.rtml.dev_FeatureView (docs/gitops.md; shipped in the rtml
-- chart). The FeatureView's status follows kstatus: status.observedGeneration and the conditions
-- Ready, Reconciling and Stalled (docs/featureview-operator.md). Lua 5.1 with only the base and
-- table libraries, as Argo CD runs it by default: no string library, nil-safe everywhere.
local hs = {}

local function condition(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function holds(c)
  return c ~= nil and c.status == "True"
end

local function said(c, otherwise)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return otherwise
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the rtml operator to register the FeatureView in Feast"
  return hs
end

local generation = tonumber(obj.metadata.generation)
local observed = tonumber(status.observedGeneration)
if generation ~= nil and observed ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the rtml operator to observe generation " .. tostring(generation)
    .. " (the status is for " .. tostring(observed) .. ")"
  return hs
end

local ready = condition(status.conditions, "Ready")
local reconciling = condition(status.conditions, "Reconciling")
local stalled = condition(status.conditions, "Stalled")

-- Stalled: Feast refused the view, or the API server its CronJob; the spec must change.
if holds(stalled) then
  hs.status = "Degraded"
  hs.message = said(stalled, "The FeatureView is stalled")
  return hs
end

if holds(ready) then
  hs.status = "Healthy"
  hs.message = said(ready, "Registered")
  if holds(reconciling) then
    -- The registry cannot be reached right now: the view keeps its last verdict (a blip must
    -- not flip the Models that read it).
    hs.message = hs.message .. "; " .. said(reconciling, "")
  end
  return hs
end

if holds(reconciling) then
  hs.status = "Progressing"
  hs.message = said(reconciling, said(ready, "The rtml operator is registering the view"))
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = said(ready, "The FeatureView is not ready")
  return hs
end

hs.status = "Progressing"
hs.message = said(ready, "Waiting for the FeatureView to become Ready")
return hs
