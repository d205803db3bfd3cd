// Validates custom resources against the schemas of their operators' CRDs.
// Reads a JSON array of objects on stdin; prints, for each, the list of errors.
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";
import * as strimzi from "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1beta2";

const models = { "keda.sh/v1alpha1": keda, "kafka.strimzi.io/v1beta2": strimzi };

function errors(obj) {
  const Model = models[obj.apiVersion]?.[obj.kind];
  if (!Model) return [`no CRD schema for ${obj.apiVersion} ${obj.kind}`];
  try {
    new Model(obj).validate();
    return [];
  } catch (error) {
    return (error.details ?? [error]).map((d) => `${d.instancePath ?? ""} ${d.message}`.trim());
  }
}

let input = "";
for await (const chunk of process.stdin) input += chunk;
console.log(JSON.stringify(JSON.parse(input).map(errors)));
