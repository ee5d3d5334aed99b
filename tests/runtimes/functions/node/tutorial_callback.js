// Copied unchanged from AWS's docs: https://docs.aws.amazon.com/lambda/latest/dg/with-ddb-example.html ("Example index.js"; source https://github.com/awsdocs/aws-lambda-developer-guide/blob/main/doc_source/with-ddb-example.md)
// A callback-style handler: aws-lambda-ric 4.x (the Node.js 24 runtime) refuses it at init with errorType Runtime.CallbackHandlerDeprecated.
console.log('Loading function');

exports.handler = function(event, context, callback) {
    console.log(JSON.stringify(event, null, 2));
    event.Records.forEach(function(record) {
        console.log(record.eventID);
        console.log(record.eventName);
        console.log('DynamoDB Record: %j', record.dynamodb);
    });
    callback(null, "message");
};
